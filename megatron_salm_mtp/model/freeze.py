"""Training modes: which parts of the SALM train (``--training-mode``).

* ``joint``: everything trains (parameters frozen elsewhere, e.g. ``--freeze-audio-encoder``,
  stay frozen).
* ``head_only``: only the MTP heads train; the LLM (embedding, decoder, output head), the audio
  encoder and the projector are frozen - the common way to add a draft head to a deployed model.
  The MTP heads read the frozen shared embedding and output head.
* ``freeze_llm``: the audio encoder, the projector (and the encoder's CTC head) and the MTP
  heads train; the LLM is frozen.
* ``encoder_ctc``: the audio encoder and its CTC head train, on the CTC loss alone; the projector
  and the LLM neither run nor train (``training/step.py``). Stage 1 of a two-stage recipe: a joint
  run then starts from its weights with ``--finetune``. The untrained parts are saved at their
  initialisation, so the checkpoint loads into a SALM of the same shape. It needs PP=1 and no MTP
  heads (refused: they would not train; the joint run attaches new ones).

Freezing happens on the bare model chunk, before the DDP wrap and before the optimizer is built:
DDP then allocates no gradient buffer for frozen parameters and the optimizer (which skips
``requires_grad=False``) keeps no state for them.
"""

import logging

from ..config import TRAINING_MODES, ConfigError

logger = logging.getLogger(__name__)

_TRAINABLE = {
    'joint': None,
    'head_only': ('language_model.mtp.',),
    'freeze_llm': ('audio_encoder.', 'audio_projector.', 'ctc_head.', 'language_model.mtp.'),
    'encoder_ctc': ('audio_encoder.', 'ctc_head.'),
}


def is_trainable(name: str, mode: str) -> bool:
    """Whether parameter ``name`` (of the bare SALM chunk) trains in ``mode``."""
    if mode not in _TRAINABLE:
        raise ValueError(f"--training-mode {mode!r}: choose one of {', '.join(TRAINING_MODES)}")
    prefixes = _TRAINABLE[mode]
    return prefixes is None or name.startswith(prefixes)


def check_optimizer_state_covers(path: str, saved_mode: str, mode: str) -> None:
    """Raise ConfigError when checkpoint ``path``, saved by a ``saved_mode`` run, keeps optimizer
    state for less than ``mode`` trains (e.g. encoder_ctc, then joint): dist_checkpointing would
    fail on the missing keys. Decided on the modes, so every rank agrees."""
    saved, wanted = _TRAINABLE[saved_mode], _TRAINABLE[mode]
    if saved is None or wanted is not None and all(prefix.startswith(saved) for prefix in wanted):
        return
    raise ConfigError(f'{path}: saved by a --training-mode {saved_mode} run, whose optimizer state holds '
                      f'less than --training-mode {mode} trains: add --finetune (a new run from its '
                      'weights) or --no-load-optim (its weights and data position, a fresh optimizer)')


def apply_training_mode(module, mode: str) -> dict[str, int]:
    """Set ``requires_grad=False`` on what ``mode`` freezes (never unfreezes anything); returns
    {'trainable': n, 'frozen': n} element counts of this rank's chunk, also logged."""
    counts = {'trainable': 0, 'frozen': 0}
    for name, param in module.named_parameters():
        if not is_trainable(name, mode):
            param.requires_grad_(False)
        counts['trainable' if param.requires_grad else 'frozen'] += param.numel()
    logger.info('training mode %s: %d trainable and %d frozen parameter elements on this rank',
                mode, counts['trainable'], counts['frozen'])
    return counts
