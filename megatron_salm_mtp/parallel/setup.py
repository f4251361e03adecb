"""Process groups, seeds and the per-stage model: everything that knows about ranks.

The model files never look at ranks; this module decides which pieces a rank builds (encoder and
projector on the first PP stage, MTP on the last), wraps them in Megatron-Core DDP and seeds RNGs
so that replicated parameters start identical on every TP rank.
"""

import logging
import os
import random
from datetime import timedelta

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from ..compat.cpu import enable_if_no_cuda
from ..config import SALMConfig
from ..model.provider import provide_salm
from ..model.salm import SALM
from ..model.specs import (
    TRANSFORMER_ENGINE,
    chosen_transformer_impl,
    fuse_te_wgrad_accumulation,
    resolve_transformer_impl,
)

logger = logging.getLogger(__name__)


def _launched_world_size() -> int:
    """Ranks the launcher started: torchrun's WORLD_SIZE, else srun's task count (one task per GPU,
    RANK taken from SLURM_PROCID), else 1 (a lone process, also inside an sbatch script)."""
    env = os.environ
    if 'WORLD_SIZE' not in env and 'SLURM_PROCID' in env:
        env['RANK'], env['WORLD_SIZE'] = env['SLURM_PROCID'], env.get('SLURM_NTASKS', '1')
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
    return int(env.get('WORLD_SIZE', '1'))


def current_device() -> torch.device:
    """This rank's device: its GPU, or the CPU without CUDA."""
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def init_distributed(timeout_minutes: int = 10, lone: bool = False) -> None:
    """Default process group: NCCL on GPU, gloo on CPU. Launched ranks (torchrun's or srun's
    variables, world size > 1) meet at MASTER_ADDR:MASTER_PORT; a world of one (``lone``, or no
    launcher) needs no rendezvous: an in-memory store, so lone processes side by side never
    compete for a port."""
    on_cpu = enable_if_no_cuda()
    if torch.distributed.is_initialized():
        return
    world = 1 if lone else _launched_world_size()
    if not on_cpu:
        torch.cuda.set_device(0 if lone else int(os.environ.get('LOCAL_RANK', '0')))
    backend, timeout = 'gloo' if on_cpu else 'nccl', timedelta(minutes=timeout_minutes)
    if world == 1:
        torch.distributed.init_process_group(backend=backend, store=torch.distributed.HashStore(),
                                             rank=0, world_size=1, timeout=timeout)
        return
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    torch.distributed.init_process_group(backend=backend, timeout=timeout)


def release_distributed() -> None:
    """Core's groups and the default process group torn down, where every rank arrives together
    (the end of a command, or the same ConfigError on every rank): a process that exits with them
    alive can abort in a communication thread's destructor ("terminate called without an active
    exception", seen once in CI after a one-line error)."""
    if torch.distributed.is_initialized():
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()


def init_model_parallel(cfg: SALMConfig, seed: int) -> None:
    """Megatron-Core's TP/PP/DP groups (DP is what remains of the world), the expert groups (EP
    taken from DP ranks; expert DP is what remains) and RNG seeds."""
    cfg.validate(torch.distributed.get_world_size())
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=cfg.virtual_pipeline_size,
        expert_model_parallel_size=cfg.expert_model_parallel_size)
    seed_for_model(cfg, seed)


def seed_for_model(cfg: SALMConfig, seed: int) -> None:
    """:func:`set_seed` with the RNG tracker ``cfg``'s CUDA graphs need: graph-safe streams, and
    with TE's kernels TE's own tracker (TE's attention refuses any other inside a capture:
    Megatron-LM's --te-rng-tracker, which its CUDA-graph recipes always set)."""
    graphs = cfg.cuda_graph_impl != 'none'
    set_seed(seed, graph_safe_rng=graphs,
             te_rng_tracker=graphs and chosen_transformer_impl(cfg.transformer_impl) == TRANSFORMER_ENGINE)


def set_seed(seed: int, graph_safe_rng: bool = False, te_rng_tracker: bool = False) -> None:
    """Same host RNG on every TP/DP rank of a stage (replicated weights match), a different one
    per PP stage; Megatron-Core's tracker gives each TP rank its own model-parallel stream.
    ``graph_safe_rng``: the tracker keeps its streams as generators a CUDA graph can register
    (core's graph manager refuses any other); seeded alike, they draw the same numbers.
    ``te_rng_tracker``: Transformer Engine's tracker (graph-safe too) instead of core's."""
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # A new tracker each time: a process may build an eager model after a graphed one (the bench).
    model_parallel_cuda_manual_seed(seed, te_rng_tracker=te_rng_tracker, use_cudagraphable_rng=graph_safe_rng,
                                    force_reset_rng=True)


def _build_chunk(cfg: SALMConfig, impl: str, vp_stage) -> SALM:
    """One model chunk; with interleaving, only the first chunk of the first PP rank embeds (and
    encodes audio) and only the last chunk of the last PP rank has the heads and MTP."""
    return provide_salm(
        cfg, impl, vp_stage=vp_stage,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage))


def fuse_wgrad_accumulation_if_asked(cfg: SALMConfig, impl: str, chunk: torch.nn.Module) -> None:
    """--gradient-accumulation-fusion (the default) for a chunk about to be wrapped in DDP: TE's
    layers accumulate weight gradients into main_grad in their GEMM; logged either way."""
    if not (cfg.gradient_accumulation_fusion and impl == TRANSFORMER_ENGINE):
        reason = 'the local spec' if cfg.gradient_accumulation_fusion else '--no-gradient-accumulation-fusion'
        logger.info('gradient accumulation fusion: off (%s)', reason)
        return
    layers = fuse_te_wgrad_accumulation(chunk)
    if cfg.cuda_graph_impl != 'none':
        # Core's graph replay restores TE's "added to main_grad" marks only where the layer's
        # config says its weight gradients fuse (else DDP adds TE's dummy gradients on top).
        chunk.config.gradient_accumulation_fusion = True
    logger.info("gradient accumulation fusion: on in %d Transformer Engine layers (core's output "
                "layer adds its gradient unfused)", layers)


def build_model(cfg: SALMConfig, ddp_config: DistributedDataParallelConfig = None,
                wrap_ddp: bool = True, before_wrap=None):
    """This rank's SALM chunks, each wrapped in Megatron-Core DDP, as the list core's schedules
    take: one per virtual pipeline stage (``vp_stage`` 0, 1, ...), or one (``vp_stage`` None)
    without interleaving. ``before_wrap(chunk)`` runs on each bare chunk first (e.g. freezing:
    DDP and the optimizer then skip the frozen parameters)."""
    impl = resolve_transformer_impl(cfg.transformer_impl)
    vp_stages = range(cfg.virtual_pipeline_size) if cfg.virtual_pipeline_size else [None]
    chunks = [_build_chunk(cfg, impl, vp_stage) for vp_stage in vp_stages]
    for chunk in chunks:
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        if before_wrap is not None:
            before_wrap(chunk)
    if not wrap_ddp:
        return chunks
    for chunk in chunks:
        fuse_wgrad_accumulation_if_asked(cfg, impl, chunk)
    ddp_config = ddp_config or DistributedDataParallelConfig(grad_reduce_in_fp32=True)
    return [DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk)
            for chunk in chunks]
