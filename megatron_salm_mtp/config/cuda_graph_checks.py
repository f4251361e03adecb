"""What Megatron-Core's layer CUDA graphs (``--cuda-graph-impl``) ask of the rest of the model:
checks across the sections, run by ``SALMConfig.validate()`` before anything is built."""

import importlib.util
import os

import torch

from ..config_checks import ConfigError, did_you_mean, one_of
from .choices import CHOICES, CUDA_GRAPH_SCOPES


def validate_cuda_graphs(cfg) -> None:
    """What Megatron-Core's layer graphs need of the model: a GPU, scopes its layers have,
    and every graphed layer called once per microbatch with the autograd core records."""
    one_of(cfg, 'cuda_graph_impl', CHOICES['cuda_graph_impl'])
    impl, scopes = cfg.cuda_graph_impl, cfg.cuda_graph_scopes
    for part in scopes:
        if part not in CUDA_GRAPH_SCOPES:
            raise ConfigError(f"--cuda-graph-scope {part!r}: choose among {', '.join(CUDA_GRAPH_SCOPES)} "
                              f"(comma-separated){did_you_mean(part, CUDA_GRAPH_SCOPES)}")
    if cfg.cuda_graph_warmup_steps < 0:
        raise ConfigError(f'--cuda-graph-warmup-steps must be >= 0, got {cfg.cuda_graph_warmup_steps}')
    if impl == 'none':
        if scopes:
            raise ConfigError('--cuda-graph-scope needs --cuda-graph-impl local or transformer_engine')
        return
    flag_impl = f'--cuda-graph-impl {impl}'
    if not torch.cuda.is_available():
        raise ConfigError(f'{flag_impl} needs a CUDA device (this run has none)')
    if ('expandable_segments:True' in os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')
            and os.environ.get('NCCL_GRAPH_REGISTER') != '0'):
        raise ConfigError(f"{flag_impl} with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True needs "
                          "NCCL_GRAPH_REGISTER=0 in the environment (core's rule: illegal memory access)")
    if impl == 'transformer_engine' and (cfg.transformer_impl == 'local' or not cfg.bf16
                                         or importlib.util.find_spec('transformer_engine') is None):
        raise ConfigError(f"{flag_impl} needs Transformer Engine, --bf16 (core's helper captures "
                          "bf16 inputs) and no --transformer-impl local")
    if impl == 'transformer_engine' and cfg.pipeline_model_parallel_size > 1:
        raise ConfigError(f"{flag_impl} needs --pipeline-model-parallel-size 1: core's schedules pick "
                          "a microbatch's graph through GPTModel, which the SALM wraps (use local)")
    if impl == 'transformer_engine' and cfg.mtp_use_repeated_layer and cfg.mtp_depths > 1:
        raise ConfigError(f'{flag_impl} holds one graph per layer and microbatch; '
                          '--mtp-use-repeated-layer runs one layer per depth: use --cuda-graph-impl local')
    if cfg.mtp_recompute:
        raise ConfigError(f'{flag_impl} cannot graph layers that --mtp-recompute runs again in '
                          'backward (core graphs recomputation only in whole-step graphs): drop one')
    moe_parts = [part for part in scopes if part.startswith('moe')]
    if moe_parts and not cfg.num_experts:
        raise ConfigError(f"--cuda-graph-scope {','.join(moe_parts)} needs MoE layers (--num-experts)")
    if 'moe_preprocess' in scopes and 'moe_router' not in scopes:
        raise ConfigError("--cuda-graph-scope moe_preprocess needs moe_router beside it (core's rule)")
    if cfg.num_experts and not scopes:
        raise ConfigError(f'{flag_impl} with --num-experts: core graphs a whole MoE layer only with '
                          'drop-and-pad experts; give --cuda-graph-scope attn (and moe_router)')
    if 'mlp' in scopes and cfg.num_experts:
        raise ConfigError('--cuda-graph-scope mlp: with --num-experts core counts every layer as MoE '
                          'and graphs dense MLPs only: use moe_router')

