"""Facts about a microbatch that the model would otherwise read back from the GPU, taken on the
host from the CPU microbatch before it moves: that its audio placeholders match its audio, and how
many supervised rows each head (main, then each MTP depth) computes logits at.

A host round trip in the forward pass (a count read back, a boolean-mask index) makes the host wait
until the GPU drains its queue, and the GPU then waits for the host's next launches; on a step whose
launches already take as long as its kernels, these stalls are the difference. With the facts below
the whole forward and backward of a microbatch is queued without one.
"""

from ..config import SALMConfig
from ..data.frames import audio_tokens
from .mtp import head_row_counts
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
                             cfg.mtp_mask_placeholder_paths)
    return dict(batch, **{HEAD_ROW_COUNTS: counts})
