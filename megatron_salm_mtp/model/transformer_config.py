"""SALMConfig -> Megatron-Core TransformerConfigs: the LLM's (with its MTP layers) and the audio
encoder's. The SALM builds its modules from these; ``provider.py`` builds the SALM."""

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from ..compat import mcore
from ..config import SALMConfig


def _dtype(cfg: SALMConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.bf16 else torch.float32


def llm_transformer_config(cfg: SALMConfig, fused_kernels: bool = False) -> TransformerConfig:
    """Megatron-Core TransformerConfig of the LLM (and its MTP layers); ``fused_kernels`` (the TE
    spec on GPU) turns on the SwiGLU and RoPE fusions and core's cross-entropy fusion if asked."""
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.kv_channels,
        qk_layernorm=cfg.qk_layernorm,
        add_qkv_bias=cfg.add_qkv_bias,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        normalization='RMSNorm',
        layernorm_epsilon=cfg.norm_epsilon,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        mtp_num_layers=cfg.mtp_num_layers or None,
        mtp_loss_scaling_factor=cfg.mtp_loss_scaling_factor,
        **_moe_transformer_config(cfg),
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=cfg.virtual_pipeline_size,
        # Interleaving sends activations and gradients to both neighbours in one exchange. In one
        # batch_isend_irecv each rank lists prev before next, so at PP=2 (both neighbours are the
        # same rank) an activation lands in the buffer for a gradient (seen on gloo: wrong loss).
        # Unbatched p2p orders even/odd ranks apart; overlapped with compute, as Megatron-LM does.
        overlap_p2p_comm=bool(cfg.virtual_pipeline_size),
        batch_p2p_comm=not cfg.virtual_pipeline_size,
        batch_p2p_sync=cfg.batch_p2p_sync,
        sequence_parallel=cfg.sequence_parallel,
        # Per-token loss over the global batch; see model/loss.py for the MTP side.
        calculate_per_token_loss=True,
        bf16=cfg.bf16,
        params_dtype=_dtype(cfg),
        pipeline_dtype=_dtype(cfg),
        autocast_dtype=_dtype(cfg),
        bias_activation_fusion=fused_kernels,
        bias_dropout_fusion=False,
        apply_rope_fusion=fused_kernels,
        # 'linear' bypasses core's loss (model/linear_ce.py); core knows native and te only.
        cross_entropy_loss_fusion=fused_kernels and cfg.cross_entropy_loss_fusion
        and not cfg.fused_linear_cross_entropy,
        cross_entropy_fusion_impl='native' if cfg.cross_entropy_fusion_impl == 'native' else 'te',
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=not torch.cuda.is_available(),
        fp8=cfg.fp8_format,
        # The LLM's and MTP's layers only: the encoder's shapes follow each batch's audio.
        **mcore.cuda_graph_fields(cfg.cuda_graph_impl, cfg.cuda_graph_scopes, cfg.cuda_graph_warmup_steps),
    )


def _moe_transformer_config(cfg: SALMConfig) -> dict:
    """TransformerConfig's MoE fields; none without experts (core then builds no MoE state)."""
    if not cfg.num_experts:
        return {}
    return dict(
        num_moe_experts=cfg.num_experts,
        moe_router_topk=cfg.moe_router_topk,
        moe_ffn_hidden_size=cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size,
        expert_model_parallel_size=cfg.expert_model_parallel_size,
        moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
        moe_router_load_balancing_type=cfg.moe_router_load_balancing_type,
        moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
        moe_grouped_gemm=cfg.moe_grouped_gemm,
        # top-1 routing needs the softmax before the top-k (a softmax over one logit has no gradient)
        moe_router_pre_softmax=cfg.moe_router_topk == 1,
    )


def encoder_transformer_config(cfg: SALMConfig) -> TransformerConfig:
    """Whisper-shaped encoder: LayerNorm, GELU MLP, biases, no sequence parallelism."""
    return TransformerConfig(
        num_layers=cfg.encoder_num_layers,
        hidden_size=cfg.encoder_hidden_size,
        ffn_hidden_size=cfg.encoder_ffn_hidden_size or 4 * cfg.encoder_hidden_size,
        num_attention_heads=cfg.encoder_num_attention_heads,
        add_bias_linear=True,
        add_qkv_bias=True,
        gated_linear_unit=False,
        activation_func=torch.nn.functional.gelu,
        normalization='LayerNorm',
        layernorm_epsilon=1e-5,
        hidden_dropout=cfg.encoder_hidden_dropout,
        attention_dropout=cfg.encoder_attention_dropout,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=1,
        sequence_parallel=False,
        calculate_per_token_loss=True,
        bf16=cfg.bf16,
        params_dtype=_dtype(cfg),
        pipeline_dtype=_dtype(cfg),
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=not torch.cuda.is_available(),
    )
