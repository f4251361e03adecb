"""Layer specs: which implementation (Transformer Engine or portable local modules) builds a layer.

One function builds the transformer-layer spec for the LLM (causal) and the audio encoder
(bidirectional, padding mask) from a Megatron-Core ``BackendSpecProvider``, so architecture and
implementation stay apart as in ``gpt_layer_specs.py``. The local backend swaps two modules of
Megatron-Core's ``LocalSpecProvider``: attention through ``scaled_dot_product_attention`` (no CUDA
RNG tracker or CUDA buffers, and fast on GPU) and a norm that supports sequence parallelism.
"""

import dataclasses
import logging
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from ..compat import mcore
from .packed import thd_block_causal_mask

logger = logging.getLogger(__name__)

TRANSFORMER_ENGINE = 'transformer_engine'
LOCAL = 'local'


class PortableNorm(torch.nn.Module):
    """LayerNorm or RMSNorm (``config.normalization``) that works under sequence parallelism.

    Megatron-Core's torch norm wrapper refuses sequence parallelism only because it cannot tag
    its weights; tagging them ``sequence_parallel`` lets ``finalize_model_grads`` all-reduce the
    partial gradients over the tensor-parallel group.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.rms = config.normalization == 'RMSNorm'
        if not self.rms and config.normalization != 'LayerNorm':
            raise ValueError(f'normalization={config.normalization!r}: use LayerNorm or RMSNorm')
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = None
        if not self.rms:
            self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for param in self.parameters():
            param.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[-1],)
        if self.rms:
            return F.rms_norm(x, shape, self.weight, self.eps)
        return F.layer_norm(x, shape, self.weight, self.bias, self.eps)


class SDPAttention(MegatronModule):
    """Core attention on ``torch.nn.functional.scaled_dot_product_attention`` (GQA aware).

    Takes Megatron's layout (``[s, b, heads, dim]`` in, ``[s, b, heads * dim]`` out) and its mask
    convention (``True`` = masked out, shape ``[b, 1, 1|sq, sk]``); a floating-point mask is added
    to the scores as it is (the decoding KV cache's, 0 or -inf, built once for all layers). A mask
    given to a causal layer replaces the causal one and carries causality itself (packed rows'
    block-diagonal causal mask, ``packed.py``). Packed THD input (``[t, heads, dim]``, one
    sequence cut by ``packed_seq_params``) runs as one row under that mask: correct, not fast
    (Transformer Engine's varlen kernels are the fast path).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError('context parallelism needs --transformer-impl transformer_engine')
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError('attention bias needs the TE spec')
        if packed_seq_params is not None:
            attention_mask = thd_block_causal_mask(packed_seq_params, query.shape[0])
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        mask_type = attn_mask_type or self.attn_mask_type
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, dim]
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        allowed = None if attention_mask is None else (
            attention_mask if attention_mask.is_floating_point() else ~attention_mask)
        dropout = self.dropout if self.training else 0.0
        # Each TP rank holds other heads: their dropout draws from its own model-parallel stream,
        # as core's attention does.
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout else nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, is_causal=causal, scale=self.softmax_scale,
                dropout_p=dropout, enable_gqa=q.shape[1] != k.shape[1],
            )
        seq, batch = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


class PortableSpecProvider(LocalSpecProvider):
    """Megatron-Core's local modules with SDPA attention and a sequence-parallel-capable norm."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return PortableNorm

    def core_attention(self) -> type:
        return SDPAttention


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider  # noqa
    except ImportError:
        return False
    return True


def chosen_transformer_impl(requested: str | None) -> str:
    """``transformer_engine`` when TE imports and CUDA is present, else ``local``."""
    usable = te_available() and torch.cuda.is_available()
    if requested == TRANSFORMER_ENGINE and not usable:
        raise ValueError('--transformer-impl transformer_engine needs Transformer Engine and CUDA')
    impl = requested or (TRANSFORMER_ENGINE if usable else LOCAL)
    if impl not in (TRANSFORMER_ENGINE, LOCAL):
        raise ValueError(f'--transformer-impl {impl!r}: choose transformer_engine or local')
    return impl


def resolve_transformer_impl(requested: str | None) -> str:
    """:func:`chosen_transformer_impl`, logged."""
    impl = chosen_transformer_impl(requested)
    logger.info('transformer implementation: %s (Transformer Engine importable: %s, CUDA: %s)',
                impl, te_available(), torch.cuda.is_available())
    return impl


def fuse_te_wgrad_accumulation(module: torch.nn.Module) -> int:
    """Make every Transformer Engine layer under ``module`` add its weight gradient into
    ``param.main_grad`` inside the GEMM (what ``gradient_accumulation_fusion`` asks of TE) instead of
    returning it for Megatron-Core DDP to add; returns how many layers were switched.

    Done after construction because the config flag would also reach core's own linears (the
    output layer), which then require apex's ``fused_weight_gradient_mlp_cuda``. TE reads the
    attribute at every forward; only for models that DDP wraps (it allocates ``main_grad``)."""
    from transformer_engine.pytorch import GroupedLinear, LayerNormLinear, LayerNormMLP, Linear
    switched = 0
    for name, layer in module.named_modules():
        if not isinstance(layer, (Linear, LayerNormLinear, LayerNormMLP, GroupedLinear)):
            continue  # attention, norms: no weight-gradient GEMM
        if not hasattr(layer, 'fuse_wgrad_accumulation'):
            raise RuntimeError(f'Transformer Engine layer {name or type(layer).__name__} has no '
                               'fuse_wgrad_accumulation attribute (TE version change): run with '
                               '--no-gradient-accumulation-fusion')
        layer.fuse_wgrad_accumulation = True
        switched += 1
    return switched


def backend_for(impl: str):
    if impl == TRANSFORMER_ENGINE:
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider
        return TESpecProvider()
    return PortableSpecProvider()


def transformer_layer_spec(impl: str, causal: bool = True, qk_layernorm: bool = False) -> ModuleSpec:
    """A pre-norm transformer layer: causal for the LLM, bidirectional (padding mask) for audio."""
    backend = backend_for(impl)
    fused = backend.fuse_layernorm_and_linear()
    norm = backend.layer_norm()
    linear_in = backend.column_parallel_layer_norm_linear() if fused else backend.column_parallel_linear()
    qk_norm = backend.layer_norm(for_qk=True) if qk_layernorm else IdentityOp
    mask_type = AttnMaskType.causal if causal else AttnMaskType.padding
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp if fused else norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={'attn_mask_type': mask_type},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=linear_in,
                    core_attention=backend.core_attention(),
                    linear_proj=backend.row_parallel_linear(),
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp if fused else norm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=linear_in, linear_fc2=backend.row_parallel_linear()),
            ),
            mlp_bda=get_bias_dropout_add,
            # Same checkpoint keys as TE's fused norm+linear, so checkpoints move between specs.
            sharded_state_dict_keys_map={} if fused else {
                'input_layernorm.': 'self_attention.linear_qkv.layer_norm_',
                'pre_mlp_layernorm.': 'mlp.linear_fc1.layer_norm_',
            },
        ),
    )


def block_spec(impl: str, num_layers: int, causal: bool = True, qk_layernorm: bool = False,
               layer: ModuleSpec | None = None) -> TransformerBlockSubmodules:
    """``num_layers`` identical layers (``layer``, or :func:`transformer_layer_spec`'s) plus the
    backend's final norm (not Megatron's default, which is the torch wrapper that refuses sequence
    parallelism)."""
    layer = layer or transformer_layer_spec(impl, causal=causal, qk_layernorm=qk_layernorm)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers,
                                      layer_norm=backend_for(impl).layer_norm())


# Core's MTP layer reads its attention's mask type, so every pattern keeps the attention
# ('E' alone is NeMo's spelling of attention + MoE in an MTP layer).
MTP_LAYER_PATTERNS = {'*-': 'attention + dense MLP', '*E': 'attention + MoE MLP',
                      'E': 'attention + MoE MLP', '*': 'attention only'}


def moe_mlp_spec(impl: str, config: TransformerConfig):
    """Megatron-Core's MoE layer (router, token dispatcher, experts) over the same backend: one
    GEMM per expert (``SequentialMLP``), or TE's grouped GEMM with ``--moe-grouped-gemm``."""
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec_for_backend
    if config.moe_grouped_gemm and impl != TRANSFORMER_ENGINE:
        raise ValueError('--moe-grouped-gemm needs --transformer-impl transformer_engine')
    mcore.enable_router_without_te()
    return get_moe_module_spec_for_backend(backend=backend_for(impl), num_experts=config.num_moe_experts,
                                           moe_grouped_gemm=config.moe_grouped_gemm)


def mtp_transformer_layer_spec(impl: str, pattern: str, qk_layernorm: bool,
                               config: TransformerConfig) -> ModuleSpec:
    """The transformer layer inside each MTP depth, from a pattern in the spirit of NeMo's
    ``hybrid_override_pattern`` ('*' attention, '-' dense MLP, 'E' MoE); a dropped MLP becomes
    identity."""
    if pattern not in MTP_LAYER_PATTERNS:
        raise ValueError(f'--mtp-layer-pattern {pattern!r}: choose one of {sorted(MTP_LAYER_PATTERNS)}')
    spec = transformer_layer_spec(impl, causal=True, qk_layernorm=qk_layernorm)
    parts = spec.submodules
    if 'E' in pattern:
        # The router reads normalised inputs, so the norm cannot fuse into a linear layer; the
        # keys map keeps only the attention norm's TE name, as core's TE MoE spec names them.
        keys_map = {k: v for k, v in parts.sharded_state_dict_keys_map.items()
                    if k != 'pre_mlp_layernorm.'}
        parts = dataclasses.replace(parts, pre_mlp_layernorm=backend_for(impl).layer_norm(),
                                    mlp=moe_mlp_spec(impl, config), sharded_state_dict_keys_map=keys_map)
    elif '-' not in pattern:
        parts = dataclasses.replace(parts, pre_mlp_layernorm=IdentityOp, mlp=IdentityOp,
                                    mlp_bda=IdentityFuncOp)
    return ModuleSpec(module=TransformerLayer, submodules=parts)


def mtp_block_spec(impl: str, pattern: str, qk_layernorm: bool, repeated: bool,
                   config: TransformerConfig, vp_stage=None):
    """Megatron-Core's MTP block spec over the same backend; None where no MTP layer lives.
    With ``repeated`` the block holds one layer whose weights serve every depth."""
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionBlockSubmodules
    if not config.mtp_num_layers:
        return None
    layer = mtp_transformer_layer_spec(impl, pattern, qk_layernorm, config)
    block = mcore.mtp_block_spec(config, layer, backend_for(impl), vp_stage=vp_stage)
    if block is not None and repeated:
        block = MultiTokenPredictionBlockSubmodules(layer_specs=block.layer_specs[:1])
    return block
