"""Model FLOPs per global batch, the numerator of TFLOP/s and MFU.

Training = 3 x forward (backward costs two forwards); a matrix multiply of an m x n weight costs
2mn per token. Per LLM token, for L layers of width H, attention width A = heads x head_dim and
key/value width K = groups x head_dim, FFN F (SwiGLU: three matrices), sequence s, vocabulary V:

    layer  = 2 (H (A + 2K) + A H + 3 H F) + 2 s A      # projections + causal QK^T and AV (s/2 each, x2)
    LLM    = 3 L layer                                  # per token
    MTP_k  = 3 (layer + 2 (2H) H)                       # per token: its layer and eh_proj
    head   = 3 (2 V H)                                  # per supervised token, main head and each depth

The heads are counted at supervised positions only, where the model computes them (a speech prompt
is mostly audio; counting a vocabulary-wide head at every position would credit work never done).

Packed rows attend within each utterance: the attention term is then ``2 n A`` per token of an
utterance of n tokens (``attended_pairs``: the sum of n^2 over the rows' attention spans).

Per audio encoder frame (T frames, width d, FFN f, bidirectional attention over T):
    3 (L_enc (2 (4 d d + 2 d f) + 4 T d)) plus the stem and the projector (counted the same way);
    Conformer convolution modules of k frames add 2 (2 d d + k d + d d) per layer.
Activation recomputation is not counted (model FLOPs, as MFU wants).
"""


from ..config import SALMConfig
from ..model.mtp import supervised_counts


def _attention_width(cfg: SALMConfig) -> int:
    return cfg.num_attention_heads * (cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads)


def _llm_layer_projections(cfg: SALMConfig) -> float:
    heads = cfg.num_attention_heads
    attn = _attention_width(cfg)
    kv = (cfg.num_query_groups or heads) * (attn // heads)
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    return 2 * (h * (attn + 2 * kv) + attn * h + 3 * h * f)


def _llm_layer(cfg: SALMConfig, seq: int) -> float:
    return _llm_layer_projections(cfg) + 2 * seq * _attention_width(cfg)


def llm_flops_per_token(cfg: SALMConfig, seq: int) -> float:
    return 3 * cfg.num_layers * _llm_layer(cfg, seq)


def mtp_flops_per_token(cfg: SALMConfig, seq: int) -> float:
    h = cfg.hidden_size
    return 3 * cfg.mtp_depths * (_llm_layer(cfg, seq) + 2 * 2 * h * h)


def head_flops_per_supervised_token(cfg: SALMConfig) -> float:
    return 3 * 2 * cfg.padded_vocab_size * cfg.hidden_size


def encoder_flops_per_frame(cfg: SALMConfig, frames: int, projector: bool = True) -> float:
    d = cfg.encoder_hidden_size
    f = cfg.encoder_ffn_hidden_size or 4 * d
    convolution = 2 * (3 * d * d + cfg.encoder_conv_kernel_size * d) if cfg.encoder_conv_kernel_size else 0
    layers = cfg.encoder_num_layers * (2 * (4 * d * d + 2 * d * f) + 4 * frames * d + convolution)
    stem = 2 * (3 * cfg.num_mel_bins * d) * 2 + 2 * (3 * d * d)  # conv1 at 2x the frame rate
    h = cfg.hidden_size
    projection = 2 * (cfg.audio_frame_stack * d * h + h * h) / cfg.audio_frame_stack if projector else 0
    return 3 * (layers + stem + projection)


def batch_flops(cfg: SALMConfig, num_samples: int, seq: int, encoder_frames: float,
                frames_per_utterance: int, supervised_tokens: float, llm: bool = True,
                attended_pairs: float | None = None) -> float:
    """Model FLOPs of one global batch: ``num_samples`` sequences of ``seq`` tokens,
    ``encoder_frames`` audio frames in total (after the stride-2 stem) and ``supervised_tokens``
    head evaluations (main head plus every depth's; with ``full_sequence_logits``, every position).
    ``attended_pairs``: the sum of n^2 over the attention spans (packed rows: their utterances);
    default ``num_samples x seq^2``, one span per row. Without ``llm`` (``--training-mode
    encoder_ctc``) the encoder's alone."""
    if not llm:
        return encoder_frames * encoder_flops_per_frame(cfg, frames_per_utterance, projector=False)
    tokens = num_samples * seq
    if attended_pairs is None:
        attended_pairs = num_samples * seq * seq
    layers = cfg.num_layers + cfg.mtp_depths
    h = cfg.hidden_size
    return (tokens * 3 * (layers * _llm_layer_projections(cfg) + cfg.mtp_depths * 2 * 2 * h * h)
            + 3 * layers * 2 * _attention_width(cfg) * attended_pairs
            + supervised_tokens * head_flops_per_supervised_token(cfg)
            + encoder_frames * encoder_flops_per_frame(cfg, frames_per_utterance))


def head_evaluations(microbatches, cfg: SALMConfig) -> float:
    """Rows the heads are evaluated on: supervised tokens of the main head and of every depth."""
    if cfg.full_sequence_logits:
        return float(sum(b['tokens'].numel() for b in microbatches) * (1 + cfg.mtp_depths))
    counts = supervised_counts(microbatches, cfg.mtp_depths, cfg.audio_token_id,
                               cfg.mtp_mask_placeholder_paths)
    return float(counts.sum())


def attended_pairs(microbatches) -> float:
    """Sum of n^2 over the attention spans: each row, or each utterance (and padding tail) of a
    packed row."""
    total = 0
    for batch in microbatches:
        rows, seq = batch['tokens'].shape
        if batch.get('cu_seqlens') is None:
            total += rows * seq * seq
            continue
        for bounds in batch['cu_seqlens'].tolist():
            edges = sorted(set(bounds))
            total += sum((b - a) ** 2 for a, b in zip(edges, edges[1:]))
    return float(total)
