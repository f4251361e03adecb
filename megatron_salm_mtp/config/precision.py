"""Numerics and kernels: the SALM's precision, which kernels run its layers and heads, and the
memory/speed trade-offs that leave its mathematics as it is."""

from dataclasses import dataclass

from ..config_checks import ConfigError, one_of
from .choices import CHOICES


@dataclass
class PrecisionConfig:
    """Parameter and GEMM precision."""
    # --- Precision ---
    bf16: bool = False
    """bfloat16 parameters and compute (fp32 main params in the optimiser)."""
    fp8_format: str | None = None
    """e4m3 or hybrid: the LLM's and MTP layers' GEMMs in FP8 through Transformer Engine (delayed
    scaling); heads, audio encoder and projector stay in bf16."""

    def _validate_precision(self) -> None:
        one_of(self, 'fp8_format', CHOICES['fp8_format'])
        if self.fp8_format and not self.bf16:
            raise ConfigError('--fp8-format needs --bf16 (FP8 GEMMs inside a bf16 model)')


@dataclass
class KernelConfig:
    """Which kernels run the layers and heads, and memory/speed trade-offs: how the model computes,
    not what (up to rounding)."""
    # --- Kernels and memory ---
    transformer_impl: str | None = None
    """transformer_engine or local; None picks TE when importable with CUDA."""
    gradient_accumulation_fusion: bool = True
    """Accumulate weight gradients into the fp32 main gradients inside the weight-gradient GEMM
    (Transformer Engine's layers; Megatron-LM's default). No effect with the local spec."""
    cross_entropy_loss_fusion: bool = True
    """Fused cross-entropy in the LM heads (Megatron-LM's flag; on by default here), of the kind
    --cross-entropy-fusion-impl names; off: core's unfused vocab-parallel cross-entropy."""
    cross_entropy_fusion_impl: str = 'te'
    """te (Transformer Engine's vocab-parallel cross-entropy) or native (Megatron-Core's fused
    one) over the head's logits, both with the TE spec on a GPU (core's unfused one elsewhere);
    linear: the output layer and the cross-entropy fused (model/linear_ce.py) for the main head
    and every MTP head, on every device: no logits tensor is held (Triton on CUDA, torch chunks
    elsewhere), which replaces --head-chunk-rows. Megatron-LM's names and choices."""
    head_chunk_rows: int = 0
    """Rows per chunk of LM head + cross-entropy (main head and each MTP depth); each chunk's
    logits are recomputed in backward, so head memory is one chunk's. 0: one pass, logits kept."""
    full_sequence_logits: bool = False
    """Compute head logits at every position, as core does (default: supervised positions only)."""
    mtp_recompute: bool = False
    """Recompute each MTP depth's layer in backward instead of keeping its activations."""
    moe_grouped_gemm: bool = False
    """All local experts in one grouped GEMM (Transformer Engine only); else one GEMM per expert."""

    # --- CUDA graphs (training) ---
    cuda_graph_impl: str = 'none'
    """CUDA graphs of the LLM's and MTP's transformer layers in training (Megatron-LM's flag):
    local (Megatron-Core's graph manager: the first step runs eagerly and records, graphs are
    built at its end) or transformer_engine (TE's make_graphed_callables through core's helper,
    captured after --cuda-graph-warmup-steps eager steps); none: eager. Needs fixed shapes
    (--pad-to-seq-length) and a GPU. The audio encoder stays eager (its shapes follow the audio)."""
    cuda_graph_scope: str | None = None
    """What each layer's graph covers, comma-separated: attn, mlp, moe_router, moe_preprocess
    (Megatron-LM's names); unset: the whole layer."""
    cuda_graph_warmup_steps: int = 3
    """Eager training steps before transformer_engine captures its graphs; with local, the eager
    runs of each graph before its capture (Megatron-LM's flag)."""

    @property
    def cuda_graph_scopes(self) -> list:
        """--cuda-graph-scope as a list (empty: whole layers)."""
        return [part.strip() for part in (self.cuda_graph_scope or '').split(',') if part.strip()]

    @property
    def fused_linear_cross_entropy(self) -> bool:
        """Whether the heads' loss runs through model/linear_ce.py."""
        return self.cross_entropy_loss_fusion and self.cross_entropy_fusion_impl == 'linear'

    def _validate_kernels(self) -> None:
        one_of(self, 'transformer_impl', CHOICES['transformer_impl'])
        if self.head_chunk_rows < 0:
            raise ConfigError(f'--head-chunk-rows {self.head_chunk_rows}: use 0 (off) or a positive row count')
        one_of(self, 'cross_entropy_fusion_impl', CHOICES['cross_entropy_fusion_impl'])
        if self.cross_entropy_fusion_impl == 'linear' and not self.cross_entropy_loss_fusion:
            raise ConfigError('--cross-entropy-fusion-impl linear needs --cross-entropy-loss-fusion '
                              '(drop --no-cross-entropy-loss-fusion)')
        if self.fused_linear_cross_entropy and self.head_chunk_rows:
            raise ConfigError(f'--head-chunk-rows {self.head_chunk_rows} chunks the unfused head; '
                              '--cross-entropy-fusion-impl linear holds no logits already: drop one')
