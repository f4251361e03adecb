"""Facts about a microbatch that the model would otherwise read back from the GPU, taken on the
host from the CPU microbatch before it moves: that its audio placeholders match its audio, and how
many supervised rows each head (main, then each MTP depth) computes logits at; with CTC, each
audio's CTC input and target lengths (``ctc.ctc_lengths``).

A host round trip in the forward pass (a count read back, a boolean-mask index) makes the host wait
until the GPU drains its queue, and the GPU then waits for the host's next launches; on a step whose
launches already take as long as its kernels, these stalls are the difference. With the facts below
the whole forward and backward of a microbatch is queued without one.
"""

import torch

from ..config import SALMConfig
from ..data.frames import audio_tokens
from .ctc import CTC_LENGTHS, ctc_lengths
from .mtp import batch_segments, head_row_counts
from .salm import check_audio_placeholders

HEAD_ROW_COUNTS = 'head_row_counts'
"""Key of the per-head supervised row counts (a list of ints) in a prepared microbatch."""


def prepare_microbatch(batch: dict, cfg: SALMConfig) -> dict:
    """``batch`` (CPU tensors) with its head row counts added, after checking its placeholders;
    raises ValueError naming the mismatch."""
    lengths = batch.get('audio_feature_lengths')
    has_audio = batch.get('audio_features') is not None and batch['audio_features'].numel() > 0
    check_audio_placeholders(batch['tokens'],
                             audio_tokens(lengths, cfg.audio_frame_stack) if has_audio else None,
                             cfg.audio_token_id)
    counts = head_row_counts(batch['loss_mask'], batch['tokens'], cfg.mtp_depths, cfg.audio_token_id,
                             cfg.mtp_mask_placeholder_paths, batch_segments(batch))
    prepared = dict(batch, **{HEAD_ROW_COUNTS: counts})
    if cfg.ctc_enabled and has_audio:
        if batch.get('ctc_targets') is None or batch.get('ctc_target_lengths') is None:
            raise ValueError('--ctc-loss-weight needs ctc_targets and ctc_target_lengths in every '
                             'microbatch with audio (the batch contract of data/batching.py)')
        targets = batch['ctc_targets']
        if targets.numel() and int(targets.max()) >= cfg.ctc_vocab_size:
            raise ValueError(f"ctc_targets hold id {int(targets.max())}, outside the CTC head's "
                             f"{cfg.ctc_vocab_size} ids (id {cfg.ctc_vocab_size} is the CTC blank; "
                             f"--ctc-target-units {cfg.ctc_target_units})")
        prepared[CTC_LENGTHS] = ctc_lengths(lengths, targets, batch['ctc_target_lengths'])
    return prepared


def ctc_target_count(microbatches) -> torch.Tensor:
    """[1] float64: CTC target ids of prepared ``microbatches`` (the audios that enter the loss)."""
    total = sum(sum(b[CTC_LENGTHS].targets) for b in microbatches if CTC_LENGTHS in b)
    return torch.tensor([float(total)], dtype=torch.float64)
