"""Trains a few steps in each training mode (one parallel layout, gloo) and records which
parameters changed and which have optimizer state, for test_freeze.py.

    torchrun --nproc-per-node N tests/support/freeze_harness.py --modes head_only,freeze_llm --pp P --out DIR
"""

import argparse
import os

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallelConfig

from megatron_salm_mtp.config import TrainConfig
from megatron_salm_mtp.model.freeze import apply_training_mode
from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel, set_seed
from megatron_salm_mtp.training.optim import build_optimizer
from megatron_salm_mtp.training.step import forward_backward
from tests.support.parallel_utils import speech_batch, tiny_config


def optimizer_state_params(optimizer):
    """ids of the model parameters the optimizer holds (its groups' params map to model params
    through fp32 copies only with bf16; here fp32: the params themselves)."""
    held = set()
    for opt in getattr(optimizer, 'chained_optimizers', [optimizer]):
        for group in opt.optimizer.param_groups:
            held.update(id(p) for p in group['params'])
    return held


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--modes', required=True)
    parser.add_argument('--pp', type=int, default=1)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    cfg = tiny_config(pipeline_model_parallel_size=args.pp)
    train = TrainConfig(train_iters=10, micro_batch_size=2, global_batch_size=4, lr=1e-2,
                        min_lr=1e-3, lr_warmup_iters=0, weight_decay=0.0, clip_grad=1.0)
    init_distributed()
    init_model_parallel(cfg, seed=1234)
    records = {}
    for mode in args.modes.split(','):
        set_seed(1234)
        model = build_model(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True),
                            before_wrap=lambda chunk, mode=mode: apply_training_mode(chunk, mode))
        optimizer, scheduler = build_optimizer(model, train, cfg)
        module = model[0].module
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        for step in range(args.steps):
            batch = speech_batch(cfg, 4, seed=step)
            micro = []
            for start in (0, 2):
                part = {k: v[start:start + 2] for k, v in batch.items()}
                part['audio_features'] = part['audio_features'][..., : int(part['audio_feature_lengths'].max())]
                micro.append(part)
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            forward_backward(model, micro, cfg)
            updated, _, _ = optimizer.step()
            assert updated
            scheduler.step(increment=4)
        held = optimizer_state_params(optimizer)
        records[mode] = {n: {'requires_grad': p.requires_grad,
                             'changed': not torch.equal(before[n], p.detach()),
                             'in_optimizer': id(p) in held}
                         for n, p in module.named_parameters()}
    rank = torch.distributed.get_rank()
    torch.save(records, os.path.join(args.out, f'rank{rank}.pt'))
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
