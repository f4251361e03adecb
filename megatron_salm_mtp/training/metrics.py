"""Megatron-style log lines, the same figures per logged step in metrics.jsonl, TensorBoard if present."""

import json
import logging
import os
import time

import torch

logger = logging.getLogger(__name__)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except ImportError:
        return float('nan')


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class MetricsWriter:
    """metrics.jsonl in ``log_dir``, TensorBoard events in ``tensorboard_dir`` (Megatron-LM's
    --tensorboard-dir) and a Weights & Biases run (--wandb-project) when asked for. Writes only on
    the rank that calls it with ``enabled=True`` (the last PP stage's first rank)."""

    def __init__(self, log_dir: str, enabled: bool, tensorboard_dir: str | None = None,
                 wandb_project: str | None = None, wandb_exp_name: str | None = None,
                 config: dict | None = None):
        self.enabled = enabled
        self.path = os.path.join(log_dir, 'metrics.jsonl')
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: the plots extra
            except ImportError:
                raise RuntimeError(f"--tensorboard-dir {tensorboard_dir}: the tensorboard package is not "
                                   "installed (pip install 'megatron_salm_mtp[plots]')") from None
            self.tensorboard = SummaryWriter(tensorboard_dir)
        if wandb_project:
            import wandb  # optional; the flag's check made sure it imports
            self.wandb = wandb.init(project=wandb_project, name=wandb_exp_name, dir=log_dir, config=config)

    def log(self, record: dict[str, float], prefix: str = ''):
        if not self.enabled:
            return
        split = prefix or 'train'
        with open(self.path, 'a') as f:
            f.write(json.dumps({'split': split, **record}) + '\n')
        scalars = {f'{split}/{key}': value for key, value in record.items()
                   if isinstance(value, (int, float)) and key != 'iteration'}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, record['iteration'])
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=record['iteration'])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def train_line(record: dict[str, float], train_iters: int, eta_seconds: float | None) -> str:
    parts = [f"iteration {record['iteration']:8d}/{train_iters:8d}",
             f"consumed samples: {record['consumed_samples']:10d}",
             f"elapsed time per iteration (ms): {record['step_ms']:.1f}",
             f"data wait (ms): {record['data_wait_ms']:.1f}",  # of the step's time, the loader's
             f"learning rate: {record['lr']:.6E}"]
    if 'lm loss' in record:  # not with --training-mode encoder_ctc (the LLM does not run)
        parts.append(f"lm loss: {record['lm loss']:.6E}")
    depth = 1
    while f'mtp_{depth} loss' in record:
        parts.append(f"mtp_{depth} loss: {record[f'mtp_{depth} loss']:.6E}")
        parts.append(f"mtp_{depth} acc: {record[f'mtp_{depth} acc']:.4f}")
        depth += 1
    if 'ctc loss' in record:  # --ctc-loss-weight
        parts.append(f"ctc loss: {record['ctc loss']:.6E}")
        parts.append(f"ctc infeasible: {record['ctc infeasible']}")
    if 'ctc intermediate loss' in record:  # --ctc-intermediate-layer
        parts.append(f"ctc intermediate loss: {record['ctc intermediate loss']:.6E}")
    if 'load_balancing_loss' in record:  # MoE MTP layers with --moe-aux-loss-coeff
        parts.append(f"load_balancing_loss: {record['load_balancing_loss']:.6E}")
    parts += [f"grad norm: {record['grad_norm']:.3f}",
              f"skipped iterations: {record['skipped_iterations']}",
              f"tokens/s: {record['tokens_per_s']:.0f}" if 'tokens_per_s' in record
              else f"encoder frames/s: {record['encoder_frames_per_s']:.0f}",
              f"TFLOP/s/GPU: {record['tflops_per_gpu']:.2f}",
              f"peak mem (GB): {record['peak_mem_gb']:.2f}"]
    if eta_seconds is not None:
        parts.append(f'ETA: {_format_eta(eta_seconds)}')
    return ' | '.join(parts)


class StepTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
