"""New MTP heads on a checkpoint trained without them (then ``--training-mode head_only``).

A checkpoint saved without MTP has no ``language_model.mtp.*`` tensors; a run with
``--mtp-num-layers D`` loads everything else from it and keeps its freshly initialised MTP layers.
Its optimizer state holds nothing for them, so that takes ``--no-load-optim`` (or ``--finetune``). Any other
difference in MTP layers between checkpoint and run is refused with both sides named (loading
would otherwise fail deep in dist_checkpointing with a missing-key list).
"""

import logging

import torch
from megatron.core.utils import unwrap_model

logger = logging.getLogger(__name__)

MTP_PREFIX = 'language_model.mtp.'


def _mtp_layers(mtp_num_layers: int | None, repeated: bool) -> int:
    return 0 if not mtp_num_layers else (1 if repeated else mtp_num_layers)


def _describe(depths: int | None, repeated: bool) -> str:
    if not depths:
        return 'no MTP layers'
    return f"{depths} MTP depths{' (one shared layer)' if repeated else ''}"


def attaches_new_mtp(path: str, stored: dict, model_chunks, with_optimizer: bool) -> bool:
    """Whether loading ``path`` (saved with the settings ``stored``) into ``model_chunks`` attaches
    new MTP layers; raises ValueError when the MTP layers differ otherwise, or when optimizer state
    is to be loaded."""
    if 'mtp_num_layers' not in stored:  # saved without its model settings: nothing to compare
        return False
    cfg = unwrap_model(list(model_chunks))[0].cfg
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


def without_mtp(model_state: dict) -> dict:
    """A model's (sharded) state dict without its MTP entries."""
    return {k: v for k, v in model_state.items() if not k.startswith(MTP_PREFIX)}


def load_all_but_mtp(module, state: dict) -> None:
    """Load ``state`` (which has no MTP entries) strictly everywhere except the MTP layers."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    others = [k for k in missing if not k.startswith(MTP_PREFIX)] + list(unexpected)
    if others:
        raise RuntimeError(f'checkpoint keys do not match the model outside the MTP layers: {others[:8]}')
