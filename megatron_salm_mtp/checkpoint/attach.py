"""New parts on a checkpoint trained without them: MTP heads (then ``--training-mode head_only``)
and the projector's layer mix (a stage 2 with ``--encoder-layer-mix`` on a stage 1 without it).

A checkpoint saved without MTP has no ``language_model.mtp.*`` tensors; a run with
``--mtp-num-layers D`` loads everything else from it and keeps its freshly initialised MTP layers.
Likewise a checkpoint without the layer mix gives a run with it everything but the mix weights,
which start equal. The optimizer state holds nothing for a new part, so that takes
``--no-load-optim`` (or ``--finetune``). Any other difference in MTP layers between checkpoint and
run, and a checkpoint's layer mix that the run lacks, are refused with both sides named (loading
would otherwise fail deep in dist_checkpointing with a missing-key list).
"""

import logging

import torch

from ..config import ConfigError

logger = logging.getLogger(__name__)

MTP_PREFIX = 'language_model.mtp.'
LAYER_MIX_KEY = 'audio_projector.layer_weights'


def new_parts(path: str, stored: dict, cfg, with_optimizer: bool) -> tuple[str, ...]:
    """Key prefixes of the parts that loading ``path`` (saved with the settings ``stored``) into a
    run of ``cfg`` attaches new; raises on the differences that cannot be attached."""
    parts = ()
    if attaches_new_mtp(path, stored, cfg, with_optimizer):
        parts += (MTP_PREFIX,)
    if attaches_new_layer_mix(path, stored, cfg, with_optimizer):
        parts += (LAYER_MIX_KEY,)
    return parts


def _mtp_layers(mtp_num_layers: int | None, repeated: bool) -> int:
    return 0 if not mtp_num_layers else (1 if repeated else mtp_num_layers)


def _describe(depths: int | None, repeated: bool) -> str:
    if not depths:
        return 'no MTP layers'
    return f"{depths} MTP depths{' (one shared layer)' if repeated else ''}"


def attaches_new_mtp(path: str, stored: dict, cfg, with_optimizer: bool) -> bool:
    """Whether loading ``path`` into a run of ``cfg`` attaches new MTP layers; raises ValueError when
    the MTP layers differ otherwise, or when optimizer state is to be loaded."""
    if 'mtp_num_layers' not in stored:  # saved without its model settings: nothing to compare
        return False
    saved = (stored.get('mtp_num_layers'), bool(stored.get('mtp_use_repeated_layer')))
    current = (cfg.mtp_num_layers, cfg.mtp_use_repeated_layer)
    if _mtp_layers(*saved) == _mtp_layers(*current):
        return False
    if _mtp_layers(*saved) != 0:
        raise ValueError(f'{path}: saved with {_describe(*saved)}, this run has {_describe(*current)} '
                         '(--mtp-num-layers / --mtp-use-repeated-layer); only a checkpoint without MTP '
                         'can take new MTP layers')
    if with_optimizer:
        raise ValueError(f'{path} has no MTP layers and this run has {_describe(*current)}: add '
                         '--no-load-optim to attach new MTP layers to its weights, or --finetune to start a '
                         'new run from them (its optimizer state holds nothing for them)')
    if torch.distributed.get_rank() == 0:
        logger.warning('%s has no MTP layers: the %s of this run start from their initialisation',
                       path, _describe(*current))
    return True


def attaches_new_layer_mix(path: str, stored: dict, cfg, with_optimizer: bool) -> bool:
    """Whether loading ``path`` into a run of ``cfg`` attaches a new layer mix; raises ConfigError
    when the checkpoint has one the run lacks, or when optimizer state is to be loaded."""
    if 'encoder_num_layers' not in stored:  # saved without its model settings: nothing to compare
        return False
    saved = bool(stored.get('encoder_layer_mix'))
    if saved == cfg.encoder_layer_mix:
        return False
    if saved:
        raise ConfigError(f'{path}: saved with --encoder-layer-mix, this run does not have it: add the flag')
    if with_optimizer:
        raise ConfigError(f'{path} has no layer mix and this run has --encoder-layer-mix: add --no-load-optim '
                          'to attach a new one to its weights, or --finetune to start a new run from them')
    if torch.distributed.get_rank() == 0:
        logger.warning('%s has no layer mix: the --encoder-layer-mix weights of this run start equal', path)
    return True


def without(model_state: dict, prefixes: tuple[str, ...]) -> dict:
    """A model's (sharded) state dict without the entries under ``prefixes``."""
    return {k: v for k, v in model_state.items() if not k.startswith(prefixes)}


def load_all_but(module, state: dict, prefixes: tuple[str, ...]) -> None:
    """Load ``state`` (which has no entries under ``prefixes``) strictly everywhere else."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    others = [k for k in missing if not k.startswith(prefixes)] + list(unexpected)
    if others:
        raise RuntimeError(f'checkpoint keys do not match the model outside {", ".join(prefixes)}: {others[:8]}')
