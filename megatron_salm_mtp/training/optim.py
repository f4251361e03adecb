"""Megatron-Core's optimizer (Adam, fp32 main params, optional distributed) and LR schedule."""

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from ..config import SALMConfig, TrainConfig


def build_optimizer(model_chunks, train: TrainConfig, model: SALMConfig):
    """(MegatronOptimizer, OptimizerParamScheduler); frozen parameters get no optimizer state."""
    config = OptimizerConfig(
        optimizer='adam', lr=train.lr, min_lr=train.min_lr, weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1, adam_beta2=train.adam_beta2, clip_grad=train.clip_grad,
        bf16=model.bf16, params_dtype=torch.bfloat16 if model.bf16 else torch.float32,
        use_distributed_optimizer=train.use_distributed_optimizer,
        overlap_param_gather=train.overlap_param_gather)
    optimizer = get_megatron_optimizer(config, model_chunks)
    steps = train.train_iters * train.global_batch_size  # the scheduler counts samples
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=train.lr, min_lr=train.min_lr,
        lr_warmup_steps=train.lr_warmup_iters * train.global_batch_size,
        lr_decay_steps=(train.lr_decay_iters or train.train_iters) * train.global_batch_size
        if train.lr_decay_style != 'constant' else steps,
        lr_decay_style=train.lr_decay_style, start_wd=train.weight_decay,
        end_wd=train.weight_decay, wd_incr_steps=steps, wd_incr_style='constant')
    return optimizer, scheduler
