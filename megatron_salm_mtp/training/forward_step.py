"""The forward step that both training drivers hand Megatron-Core's schedules: the plugin's loop
(``step.py``) and Megatron-LM's ``pretrain()`` (``megatron_lm/providers.py``).

A host microbatch (CPU tensors, prepared by ``model/host_inputs.py``) moves to the rank's device
and runs through the SALM; the loss function that follows is each driver's. Before a global batch's
forward, the supervised-token counts of the whole batch (all microbatches, all DP ranks) fix the
MTP heads' weights (:func:`set_global_mtp_weights`).
"""

from collections.abc import Sequence
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.utils import unwrap_model

from ..config import SALMConfig
from ..model.ctc import CTC_LENGTHS
from ..model.host_inputs import HEAD_ROW_COUNTS
from ..model.loss import masked_token_loss, summed_ctc_loss
from ..model.mtp import mtp_loss_weights
from ..parallel.setup import current_device

BATCH_KEYS = ('tokens', 'labels', 'loss_mask', 'position_ids', 'audio_features',
              'audio_feature_lengths', 'ctc_targets')
AUDIO_KEYS = ('audio_features', 'audio_feature_lengths', 'ctc_targets')


def to_device(batch: dict[str, torch.Tensor], keys=BATCH_KEYS) -> dict[str, torch.Tensor]:
    return {key: batch[key].to(current_device(), non_blocking=True) if batch.get(key) is not None else None
            for key in keys}


def reduce_over_data_parallel(local_counts: torch.Tensor) -> torch.Tensor:
    """This rank's counts of a global batch, summed over DP, on the device."""
    counts = local_counts.to(current_device())
    torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    return counts


def set_global_mtp_weights(language_models: Sequence, counts: torch.Tensor, cfg: SALMConfig) -> None:
    """Hand each MTP stage its per-depth weights from the global batch's ``counts`` (the main head's
    supervised tokens, then each depth's; reduced over DP)."""
    weights = mtp_loss_weights(counts[:1 + cfg.mtp_depths], cfg.mtp_loss_scaling_factor)
    for language_model in language_models:
        if language_model.mtp_process:
            language_model.set_mtp_loss_weights(weights)


def salm_forward(model, host_batch: dict, keys=BATCH_KEYS):
    """(the SALM's output for one prepared host microbatch, the microbatch's ``keys`` on the device).
    Packed rows' ``cu_seqlens`` stay on the host: the model builds its layout from them without
    waiting for the device."""
    batch = to_device(host_batch, keys)
    output = model(batch['tokens'], batch['position_ids'], labels=batch['labels'],
                   loss_mask=batch['loss_mask'], audio_features=batch['audio_features'],
                   audio_feature_lengths=batch['audio_feature_lengths'],
                   head_row_counts=host_batch[HEAD_ROW_COUNTS], ctc_targets=batch.get('ctc_targets'),
                   ctc_lengths=host_batch.get(CTC_LENGTHS), cu_seqlens=host_batch.get('cu_seqlens'))
    return output, batch


def forward_step(data_iterator, model):
    """The plugin loop's step: (per-token loss [b, s] on the last stage, the loss function)."""
    output, batch = salm_forward(model, next(data_iterator))
    return output, partial(masked_token_loss, batch['loss_mask'])


def encoder_ctc_forward_step(data_iterator, model):
    """--training-mode encoder_ctc: the summed CTC loss of the encoder and its CTC head, counted
    in target ids (no LLM, no projector)."""
    host_batch = next(data_iterator)
    lengths = host_batch.get(CTC_LENGTHS)
    if lengths is None:
        raise ValueError('--training-mode encoder_ctc: a microbatch without audio; the CTC loss needs '
                         'audio and its transcript in every sample')
    batch = to_device(host_batch, AUDIO_KEYS)
    loss_sum = unwrap_model(model).encoder_ctc_loss(batch['audio_features'], batch['audio_feature_lengths'],
                                                    batch['ctc_targets'], lengths)
    return loss_sum, partial(summed_ctc_loss, sum(lengths.targets))
