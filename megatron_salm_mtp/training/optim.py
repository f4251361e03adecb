"""Megatron-Core's optimizer (Adam, fp32 main params, optional distributed) and LR schedule, and
the update split in two around the check for non-finite gradients.

Core's ``optimizer.step()`` tests gradients only under fp16 loss scaling: in bf16 and fp32 a NaN
or inf gradient is applied (a NaN norm even turns clipping off). ``prepare_step`` makes the main
gradients ready and reduces their norm once, before anything changes; the caller decides, over all
ranks, whether ``finish_step`` clips by that norm and updates, or the step is skipped.
"""

import logging

import torch
from megatron.core.optimizer import OptimizerConfig, clip_grads, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from ..config import SALMConfig, TrainConfig

logger = logging.getLogger(__name__)


def build_optimizer(model_chunks, train: TrainConfig, model: SALMConfig):
    """(MegatronOptimizer, OptimizerParamScheduler); frozen parameters get no optimizer state."""
    config = OptimizerConfig(
        optimizer='adam', lr=train.lr, min_lr=train.min_lr, weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1, adam_beta2=train.adam_beta2, clip_grad=train.clip_grad,
        bf16=model.bf16, params_dtype=torch.bfloat16 if model.bf16 else torch.float32,
        use_distributed_optimizer=model.use_distributed_optimizer,
        overlap_param_gather=model.overlap_param_gather)
    optimizer = get_megatron_optimizer(config, model_chunks)
    logger.info('optimizer: %s', implementation(optimizer))
    steps = train.train_iters * train.global_batch_size  # the scheduler counts samples
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=train.lr, min_lr=train.min_lr,
        lr_warmup_steps=train.lr_warmup_iters * train.global_batch_size,
        lr_decay_steps=(train.lr_decay_iters or train.train_iters) * train.global_batch_size
        if train.lr_decay_style != 'constant' else steps,
        lr_decay_style=train.lr_decay_style, start_wd=train.weight_decay,
        end_wd=train.weight_decay, wd_incr_steps=steps, wd_incr_style='constant')
    return optimizer, scheduler


def _leaves(optimizer) -> list:
    """The optimizers under core's ChainedOptimizer (dense and expert parameters), or itself."""
    return list(getattr(optimizer, 'chained_optimizers', None) or [optimizer])


def implementation(optimizer) -> str:
    """Which Adam and gradient-norm kernels run: megatron-core takes Transformer Engine's, else
    Apex's, else torch's AdamW and its own Python multi-tensor functions (the same update rule),
    depending on what imports; logged so that runs on different installs can be told apart."""
    inner = {type(leaf.optimizer) for leaf in _leaves(optimizer) if getattr(leaf, 'optimizer', None) is not None}
    adam = ', '.join(sorted(f'{cls.__module__}.{cls.__qualname__}' for cls in inner)) or 'none on this rank'
    return f'{adam}; grad-norm kernels from {clip_grads.multi_tensor_applier.__module__}'


def prepare_step(optimizer):
    """(loss-scale overflow, grad norm): main gradients made ready (copied to fp32, unscaled) and
    their norm reduced as core's step reduces it (model-parallel group, the world with the
    distributed optimizer, expert optimizers included). Collective; nothing is updated yet."""
    overflow = optimizer.prepare_grads()
    return overflow, float(optimizer.get_grad_norm())


def finish_step(optimizer, grad_norm: float) -> bool:
    """Clip by ``grad_norm`` (each optimizer with its own --clip-grad, as core's ChainedOptimizer
    does) and update; True when the parameters changed."""
    for leaf in _leaves(optimizer):
        params = leaf.get_parameters()
        if getattr(leaf, 'is_stub_optimizer', False) or not params or leaf.config.clip_grad <= 0.0:
            continue
        clip_grad_by_total_norm_fp32(params, max_norm=leaf.config.clip_grad, total_norm=grad_norm,
                                     use_decoupled_grad=leaf.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return optimizer.step_with_ready_grads()
