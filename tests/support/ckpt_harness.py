"""Runs a plan of checkpoint operations in one parallel layout (one process per rank, gloo).

    torchrun --nproc-per-node N tests/support/ckpt_harness.py --config C.json --plan P.json --out DIR

The plan is a JSON list of operations run in order on every rank: ``build`` (model, optimizer,
scheduler; a later ``build`` replaces them with freshly initialised ones), ``train`` (one optimizer
step per batch seed), ``forward`` (forward-only loss), ``save``, ``load``, ``crash_save`` (a save
that dies after the shards are written but before the checkpoint is finalised), ``async_save``
(``--async-save``'s path: the save is scheduled, its folder state recorded before any finalize),
``finalize`` (waits for the async saves and finalizes them), ``perturb_rng`` and ``dump`` (this
rank's parameter shards under TP=1/PP=1 names, RNG states, lr, Adam steps). Every rank writes what
it recorded to DIR/rank{R}.pt.
"""

import argparse
import json
import multiprocessing
import os
import random
import time

if __name__ != '__mp_main__':
    # dist_checkpointing's helper process (spawned) re-imports this file as __mp_main__: without
    # this guard every rank's first save would pay for importing torch and megatron again.
    import numpy as np
    import torch
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salm_mtp.checkpoint import layout, save_load
    from megatron_salm_mtp.checkpoint.save_strategies import PendingSaves
    from megatron_salm_mtp.config import SALMConfig, TrainConfig
    from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel
    from megatron_salm_mtp.training.optim import build_optimizer
    from megatron_salm_mtp.training.step import forward_backward
    from tests.support.harness import global_name, shard_spec
    from tests.support.parallel_utils import speech_batch

GLOBAL_BATCH = 4


class Run:
    def __init__(self, cfg, dist_opt: bool, out: str):
        self.cfg, self.dist_opt, self.out = cfg.replace(use_distributed_optimizer=dist_opt), dist_opt, out
        self.train_cfg = TrainConfig(train_iters=10, micro_batch_size=2, global_batch_size=GLOBAL_BATCH,
                                     lr=3e-3, min_lr=3e-4, lr_warmup_iters=2, weight_decay=0.01, clip_grad=1.0)
        self.records = {'losses': []}

    def build(self, op):
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                            use_distributed_optimizer=self.dist_opt)
        self.model = build_model(self.cfg, ddp)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.train_cfg, self.cfg)

    def _microbatches(self, seed):
        batch = speech_batch(self.cfg, GLOBAL_BATCH, seed)
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        per_rank = GLOBAL_BATCH // dp_size
        size = self.train_cfg.micro_batch_size
        out = []
        for start in range(dp_rank * per_rank, (dp_rank + 1) * per_rank, size):
            part = {k: v[start:start + size] for k, v in batch.items()}
            part['audio_features'] = part['audio_features'][..., : int(part['audio_feature_lengths'].max())]
            out.append(part)
        return out

    def train(self, op):
        for seed in op['seeds']:
            for chunk in self.model:
                chunk.zero_grad_buffer()
            self.optimizer.zero_grad()
            loss = forward_backward(self.model, self._microbatches(seed), self.cfg).mean
            updated, _, _ = self.optimizer.step()
            assert updated
            self.scheduler.step(increment=GLOBAL_BATCH)
            self.records['losses'].append(loss)

    def forward(self, op):
        for chunk in self.model:
            chunk.eval()
        self.records[op['name']] = forward_backward(self.model, self._microbatches(op['seed']),
                                                    self.cfg, forward_only=True).mean
        for chunk in self.model:
            chunk.train()

    def save(self, op, pending=None):
        common = {'consumed_samples': op['iteration'] * GLOBAL_BATCH, 'skipped_iterations': 1,
                  'data': {'consumed_samples': op['iteration'] * GLOBAL_BATCH, 'epoch': 0, 'seed': 7}}
        self.records.setdefault('saved_paths', []).append(save_load.save_checkpoint(
            op['dir'], op['iteration'], self.model, self.optimizer, self.scheduler, common,
            {'tensor_model_parallel_size': self.cfg.tensor_model_parallel_size, 'lr': 3e-3}, pending,
            op.get('sharding', save_load.DP_RESHARDABLE)))

    def _folder_state(self, op):
        final = layout.checkpoint_dir(op['dir'], op['iteration'])
        return {'complete': layout.is_complete(final),
                'latest': layout.latest_checkpoint_iteration(op['dir']),
                'in_flight': self.pending.in_flight}

    def async_save(self, op):
        self.pending = getattr(self, 'pending', None) or PendingSaves()
        self.save(op, self.pending)
        self.records[op['name']] = self._folder_state(op)

    def finalize(self, op):
        self.pending.finalize(blocking=True)
        self.records[op['name']] = self._folder_state(op)

    def crash_save(self, op):
        """The shards are all written, then the process dies before the checkpoint is final
        (what was recorded so far is written first; the launch exits with code 17)."""
        def die(*args, **kwargs):
            self.write()
            for child in multiprocessing.active_children():  # dist_checkpointing's helper:
                child.kill()  # a crash takes the rank's whole process tree down
            os._exit(17)
        save_load._finalize = die
        self.save(op)

    def load(self, op):
        result = save_load.load_checkpoint(op['dir'], self.model, self.optimizer, self.scheduler,
                                           load_optimizer=op.get('load_optimizer', True))
        self.records[op.get('name', 'load_result')] = result

    def load_refused(self, op):
        """A load that must fail with a ValueError: its message is recorded."""
        try:
            save_load.load_checkpoint(op['dir'], self.model, self.optimizer, self.scheduler)
        except ValueError as err:
            self.records[op['name']] = str(err)
        else:
            raise AssertionError(f"loading {op['dir']} was expected to fail")

    def perturb_rng(self, op):
        random.random(), np.random.rand(), torch.rand(3)
        model_parallel_cuda_manual_seed(999)

    def write(self):
        self.records.update(tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                            pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                            dp_rank=parallel_state.get_data_parallel_rank())
        torch.save(self.records, os.path.join(self.out, f'rank{torch.distributed.get_rank()}.pt'))

    def dump(self, op):
        params = {global_name(n, self.cfg, vp_stage): (p.detach().clone(), shard_spec(n, p))
                  for vp_stage, chunk in enumerate(self.model) for n, p in chunk.module.named_parameters()}
        tracker = tensor_parallel.get_cuda_rng_tracker().get_states()
        inner = [o.optimizer for o in getattr(self.optimizer, 'chained_optimizers', [self.optimizer])]
        steps = sorted({float(s['step']) for o in inner for s in o.state.values() if 'step' in s})
        self.records[op['name']] = {
            'params': params,
            'rng': {'random': random.getstate(), 'numpy': np.random.get_state()[1].copy(),
                    'torch': torch.get_rng_state(),
                    'tracker': {k: v.clone() for k, v in tracker.items()}},
            'lr': self.optimizer.param_groups[0]['lr'], 'adam_steps': steps,
            'scheduler_steps': self.scheduler.num_steps}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', required=True)
    parser.add_argument('--plan', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--dist-opt', action='store_true')
    args = parser.parse_args()
    with open(args.config) as f:
        cfg = SALMConfig(**json.load(f))
    with open(args.plan) as f:
        plan = json.load(f)
    init_distributed()
    init_model_parallel(cfg, seed=1234)
    run = Run(cfg, args.dist_opt, args.out)
    for op in plan:
        started = time.time()
        getattr(run, op['op'])(op)
        run.records.setdefault('timings', []).append((op['op'], round(time.time() - started, 2)))
    run.write()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
