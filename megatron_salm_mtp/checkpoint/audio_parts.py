"""The audio encoder's optional parts across a checkpoint and a run: its CTC head
(``--ctc-loss-weight``, ``--ctc-target-units``) and its Conformer convolution modules
(``--encoder-conv-kernel-size``). (The projector's layer mix can be attached: ``attach.py``.)

A run with a CTC head loads it from a checkpoint that has one of the same units, as a
``--training-mode encoder_ctc`` stage 1 saves it for the joint stage 2. A head of other units
would fail inside dist_checkpointing on a shape, a checkpoint without one on a missing-key list:
both are refused first, naming the flags. A checkpoint's head that the run does not build
(``--ctc-loss-weight 0``) is simply not loaded. The convolution modules must match outright.
"""

import logging

import torch

from ..config import ConfigError

logger = logging.getLogger(__name__)


def check_audio_parts(path: str, stored: dict, cfg) -> None:
    """Raise ConfigError unless checkpoint ``path`` (saved with the settings ``stored``) holds the
    audio parts a run of ``cfg`` builds; nothing to compare when its settings were not saved."""
    if not stored:
        return
    check_ctc_head(path, stored, cfg)
    if 'encoder_num_layers' not in stored:  # saved without the model's settings: nothing to compare
        return
    saved_kernel = stored.get('encoder_conv_kernel_size') or 0
    if saved_kernel != cfg.encoder_conv_kernel_size:
        raise ConfigError(f'{path}: saved with --encoder-conv-kernel-size {saved_kernel}, this run has '
                          f"{cfg.encoder_conv_kernel_size}: give the checkpoint's")


def check_ctc_head(path: str, stored: dict, cfg) -> None:
    """Raise ConfigError unless checkpoint ``path`` (settings ``stored``) holds the CTC head ``cfg`` builds."""
    saved = (stored.get('ctc_loss_weight') or 0) > 0
    saved_units = stored.get('ctc_target_units', 'tokens')
    if cfg.ctc_enabled and not saved:
        raise ConfigError(f'{path}: saved without a CTC head, this run has one (--ctc-loss-weight '
                          f'{cfg.ctc_loss_weight}): drop --ctc-loss-weight, or load a checkpoint trained with it')
    if cfg.ctc_enabled and saved_units != cfg.ctc_target_units:
        raise ConfigError(f'{path}: its CTC head emits {saved_units}, this run has --ctc-target-units '
                          f"{cfg.ctc_target_units}: give the checkpoint's units")
    if saved and not cfg.ctc_enabled and torch.distributed.get_rank() == 0:
        logger.info('%s: its CTC head is not loaded (this run has --ctc-loss-weight 0)', path)
