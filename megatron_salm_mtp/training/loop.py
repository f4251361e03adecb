"""The training loop on megatron.core: data -> schedules -> optimizer -> logs, evals, checkpoints.

Every rank of a DP replica reads the same microbatches (each stage needs tokens or labels, and the
MTP stage needs both). Decisions that must be unanimous - skip a non-finite step, save and stop on a
signal - are all-reduced over the world before anyone acts on them.
"""

import contextlib
import logging
import math
import os
import sys
import time

import torch
import yaml
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallelConfig

from ..checkpoint.metadata import is_model_only, training_tokenizer, training_vocab_size
from ..checkpoint.run_folders import claim_checkpoint_folders
from ..checkpoint.save_load import DP_RESHARDABLE, FULLY_RESHARDABLE, load_checkpoint, save_checkpoint
from ..checkpoint.save_strategies import PendingSaves
from ..compat.process import forked_children_die_with_this_process
from ..config import ENCODER_CTC, ConfigError
from ..config_checks import RunError
from ..data.frames import encoder_frames
from ..data.loader import build_dataloader
from ..model.freeze import apply_training_mode
from ..parallel.setup import build_model, current_device, init_distributed, init_model_parallel, release_distributed
from ..run_config import RunConfig
from .cuda_graphs import LayerGraphs
from .flops import attended_pairs, batch_flops, head_evaluations
from .metrics import MetricsWriter, StepTimer, peak_memory_gb, train_line
from .optim import build_optimizer, finish_step, prepare_step
from .step import ctc_metrics, forward_backward, moe_metrics, mtp_metrics
from .stop import StopRequest

logger = logging.getLogger(__name__)


def grad_norm_value(grad_norm) -> float:
    """The optimizer's grad norm as a float: None when nothing was clipped, a device tensor on
    megatron-core 0.19 with TE's multi-tensor kernels (formatting that crashed the log line)."""
    return 0.0 if grad_norm is None else float(grad_norm)


def _any_rank(*flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks, in one all-reduce."""
    value = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=current_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in value.tolist()]


def _endless(loader):
    while True:
        yield from loader


def _reporting_rank() -> bool:
    return (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank() == 0)


def _global_work(microbatches, cfg) -> tuple:
    """(encoder frames, head evaluations, sum of each audio's frames squared, LLM attended pairs)
    of the global batch, for the FLOP count (attention within each audio, and within each
    utterance of a packed row)."""
    frames = [encoder_frames(int(n)) for b in microbatches for n in b['audio_feature_lengths']]
    value = torch.tensor([float(sum(frames)), head_evaluations(microbatches, cfg),
                          float(sum(t * t for t in frames)), attended_pairs(microbatches)],
                         dtype=torch.float64, device=current_device())
    torch.distributed.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return tuple(value.tolist())


class Trainer:
    def __init__(self, run: RunConfig):
        self.run, self.cfg, self.train_cfg = run, run.model, run.train
        forked_children_die_with_this_process()  # DataLoader workers, forked checkpoint writers
        init_distributed()
        self.save_lock = claim_checkpoint_folders(  # held for the life of the run
            self.train_cfg.load, self.train_cfg.save, self.train_cfg.overwrite_save)
        run.data = training_tokenizer(run.data, self.train_cfg.load)
        tokenizer = run.data.make_tokenizer()
        # an imported table may be larger than the tokenizer's vocabulary
        self.cfg.vocab_size = training_vocab_size(tokenizer.vocab_size, self.train_cfg.load)
        self.cfg.audio_token_id = tokenizer.audio_token_id
        init_model_parallel(self.cfg, self.train_cfg.seed)
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        self.train_cfg.validate(dp_size)
        self.num_microbatches = self.train_cfg.global_batch_size // (self.train_cfg.micro_batch_size * dp_size)
        self.cfg.validate(torch.distributed.get_world_size(), self.num_microbatches)
        # Manifests first: a bad one fails before the model is built.
        self.train_loader = build_dataloader(run.data, self.train_cfg.train_manifest.split(','),
                                             dp_rank, dp_size, tokenizer=tokenizer, augment=True)
        self.valid_loader = None
        if self.train_cfg.valid_manifest and self.train_cfg.eval_interval:
            self.valid_loader = build_dataloader(run.data.for_evaluation(),  # one utterance per row
                                                 self.train_cfg.valid_manifest.split(','), dp_rank, dp_size,
                                                 tokenizer=tokenizer, shuffle=False)
            self.valid_start = self.valid_loader.state_dict()
        ddp = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=self.cfg.overlap_grad_reduce,
            use_distributed_optimizer=self.cfg.use_distributed_optimizer,
            overlap_param_gather=self.cfg.overlap_param_gather)
        self.model = build_model(self.cfg, ddp, before_wrap=lambda chunk: apply_training_mode(
            chunk, self.train_cfg.training_mode))
        self.optimizer, self.scheduler = build_optimizer(self.model, self.train_cfg, self.cfg)
        self.graphs = LayerGraphs(self.model, self.cfg, self.train_cfg.micro_batch_size,
                                  self.train_cfg.global_batch_size, self.optimizer)
        log_dir = self.train_cfg.log_dir or self.train_cfg.save or os.path.join('runs', 'latest')
        self.metrics = MetricsWriter(log_dir, _reporting_rank(), self.train_cfg.tensorboard_dir,
                                     self.train_cfg.wandb_project, self.train_cfg.wandb_exp_name, run.resolved())
        # --training-mode encoder_ctc runs the encoder alone: its loss is the CTC, not the LLM's.
        self.runs_llm = self.train_cfg.training_mode != ENCODER_CTC
        self.iteration, self.skipped, self.skip_streak = 0, 0, 0
        self.saved_iteration, self.save_pending = None, False
        self.pending_saves = PendingSaves() if self.train_cfg.async_save else None  # --async-save

    def resume(self):
        if not self.train_cfg.load:
            return
        # A new run from the weights alone (an import-hf checkpoint, or --finetune): no optimizer,
        # LR schedule, RNG or data position, and iteration 0.
        imported = is_model_only(self.train_cfg.load)
        weights_only = imported or self.train_cfg.finetune
        loaded = load_checkpoint(self.train_cfg.load, self.model, self.optimizer, self.scheduler,
                                 load_optimizer=not (weights_only or self.train_cfg.no_load_optim),
                                 load_rng=not weights_only, training_mode=self.train_cfg.training_mode)
        if loaded is None:
            logger.warning('--load %s holds no complete checkpoint: starting from scratch', self.train_cfg.load)
            return
        if weights_only:
            logger.info('initialised from the weights of %s (%s); training starts at iteration 0',
                        self.train_cfg.load, 'an imported model' if imported else '--finetune')
            return
        self.iteration, common = loaded
        self.train_loader.load_state_dict(common['data'])
        self.skipped = common.get('skipped_iterations', 0)
        logger.info('resumed from %s at iteration %d', self.train_cfg.load, self.iteration)

    @contextlib.contextmanager
    def _parameters_gathered(self):
        """With --overlap-param-gather a rank's parameters outside its optimizer shard arrive only
        in the next forward (core's pre-hooks); checkpoints and evaluation need them now. As in
        Megatron-LM: drop the hooks (which all-gathers), then put them back."""
        if not self.cfg.overlap_param_gather:
            yield
            return
        for chunk in self.model:
            chunk.disable_forward_pre_hook()
        try:
            yield
        finally:
            for chunk in self.model:
                chunk.enable_forward_pre_hook()

    def save(self):
        common = {'data': self.train_loader.state_dict(), 'skipped_iterations': self.skipped,
                  'consumed_samples': self.train_loader.consumed_samples}
        started = time.perf_counter()
        self.finish_saves()  # the next save clears unfinished folders
        waited = time.perf_counter() - started
        sharding = FULLY_RESHARDABLE if self.train_cfg.dist_ckpt_optim_fully_reshardable else DP_RESHARDABLE
        with self._parameters_gathered():
            optimizer = None if self.train_cfg.no_save_optim else self.optimizer
            save_checkpoint(self.train_cfg.save, self.iteration, self.model, optimizer, self.scheduler,
                            common, self.run.resolved(), self.pending_saves, sharding)
        self.saved_iteration, self.save_pending = self.iteration, False
        if torch.distributed.get_rank() == 0:
            background = f' (written in the background; {waited:.2f} s of it waiting for the previous save)'
            logger.info('checkpoint of iteration %d: training held %.2f s%s', self.iteration,
                        time.perf_counter() - started, background if self.pending_saves else '')

    def finish_saves(self, blocking: bool = True) -> None:
        """Finalize async saves whose writes are done (``blocking``: all of them); collective."""
        if self.pending_saves is not None:
            self.pending_saves.finalize(blocking)

    def write_resolved_config(self):
        target = self.train_cfg.save or self.metrics.path and os.path.dirname(self.metrics.path)
        if torch.distributed.get_rank() == 0 and target:
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, 'config.yaml'), 'w') as f:
                yaml.safe_dump(self.run.resolved(), f, sort_keys=True)

    def train_step(self, microbatches):
        """(main loss - the LM's, or the CTC with --training-mode encoder_ctc -, grad norm, why the
        update was skipped or None). With --check-for-nan-in-loss-and-grad a non-finite loss or
        gradient norm on any rank skips the update on every rank (the scheduler does not advance)."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss = forward_backward(self.model, microbatches, self.cfg,
                                training_mode=self.train_cfg.training_mode).mean
        if not self.train_cfg.check_for_nan_in_loss_and_grad:
            updated, grad_norm, _ = self.optimizer.step()
            skipped = None if updated else 'loss-scale overflow'
        else:
            overflow, grad_norm = prepare_step(self.optimizer)
            bad_loss, bad_grad = _any_rank(parallel_state.is_pipeline_last_stage() and not math.isfinite(loss),
                                           overflow or not math.isfinite(grad_norm))
            skipped = 'non-finite loss' if bad_loss else 'non-finite gradient' if bad_grad else None
            if skipped is None:
                finish_step(self.optimizer, grad_norm)
        if skipped is None:
            self.scheduler.step(increment=self.train_cfg.global_batch_size)
        return loss, grad_norm_value(grad_norm), skipped

    def evaluate(self):
        with self._parameters_gathered(), self.graphs.eager():
            self._evaluate()

    def _evaluate(self):
        for chunk in self.model:
            chunk.eval()
        loss_sum = tokens = 0.0
        self.valid_loader.load_state_dict(self.valid_start)  # the same batches at every evaluation
        batches = iter(self.valid_loader)
        with torch.no_grad():
            for _ in range(self.train_cfg.eval_iters):
                microbatches = [next(batches, None) for _ in range(self.num_microbatches)]
                if any(b is None for b in microbatches):
                    break
                totals = forward_backward(self.model, microbatches, self.cfg, forward_only=True,
                                          training_mode=self.train_cfg.training_mode)
                loss_sum, tokens = loss_sum + totals.loss_sum, tokens + totals.tokens
        record = {'iteration': self.iteration}
        if self.runs_llm:  # else ctc_metrics gives the loss (the same figure)
            record['lm loss'] = loss_sum / max(tokens, 1.0)
        record.update(mtp_metrics(self.model))
        record.update(ctc_metrics(self.model, self.cfg))
        for chunk in self.model:
            chunk.train()
        if _reporting_rank():
            logger.info('validation at iteration %d | %s', self.iteration,
                        ' | '.join(f'{k}: {v:.6E}' if isinstance(v, float) else f'{k}: {v}'
                                   for k, v in record.items() if k != 'iteration'))
        self.metrics.log(record, prefix='valid')

    def fit(self):
        self.resume()
        self.write_resolved_config()
        stop = StopRequest(saving=bool(self.train_cfg.save))
        batches = _endless(self.train_loader)
        window, timer, started = [], StepTimer(), time.perf_counter()
        start_iteration = self.iteration
        while self.iteration < self.train_cfg.train_iters:
            waiting = time.perf_counter()  # the GPU idles meanwhile: the last step read its loss back
            microbatches = [next(batches) for _ in range(self.num_microbatches)]
            waiting = time.perf_counter() - waiting
            work = _global_work(microbatches, self.cfg)
            self.graphs.before_step(self.iteration - start_iteration)
            loss, grad_norm, skipped = self.train_step(microbatches)
            self.graphs.after_step()
            self.iteration += 1
            self._count_skip(skipped)
            window.append((loss, grad_norm, work, waiting))
            if self.iteration % self.train_cfg.log_interval == 0:
                self.log(window, timer.lap(), started, start_iteration)
                window = []
            if self.valid_loader is not None and self.iteration % self.train_cfg.eval_interval == 0:
                self.evaluate()
            self.finish_saves(blocking=False)
            self._save_if_due(skipped)
            reason = self._stop_reason(stop, started)
            if reason:
                if self.train_cfg.save and self.saved_iteration != self.iteration:
                    self.save()
                self.finish_saves()  # a signal's save is complete before the rank exits
                logger.warning('stopping at iteration %d (%s)', self.iteration, reason)
                return
        if self.train_cfg.save and self.saved_iteration != self.iteration:
            self.save()
        self.finish_saves()

    def _count_skip(self, skipped: str | None) -> None:
        """Count a skipped update; too many in a row stop the run."""
        if not skipped:
            self.skip_streak = 0
            return
        self.skipped += 1
        self.skip_streak += 1
        logger.warning('iteration %d: %s, update skipped (%d in a row)', self.iteration, skipped,
                       self.skip_streak)
        limit = self.train_cfg.max_consecutive_nan_skips
        if self.skip_streak >= limit:
            raise RuntimeError(f'{self.skip_streak} consecutive iterations with a non-finite loss or '
                               f'gradient (--max-consecutive-nan-skips {limit}); stopping. Lower --lr '
                               'or check the data.')

    def _save_if_due(self, skipped: str | None) -> None:
        """--save-interval saves, never right after a skipped update: the save due then waits for
        the next step that updates (a skip follows a fault that may have touched more than the
        gradients)."""
        interval = self.train_cfg.save_interval
        if not (self.train_cfg.save and interval):
            return
        self.save_pending = self.save_pending or self.iteration % interval == 0
        if self.save_pending and skipped:
            logger.warning('iteration %d: the checkpoint due is deferred to the next step that '
                           'updates', self.iteration)
        elif self.save_pending:
            self.save()

    def _stop_reason(self, stop: StopRequest, started: float) -> str | None:
        """Why training stops after this step, if it does: every rank gets the same answer (one
        signalled rank or one slow clock stops them all)."""
        limit = self.train_cfg.exit_duration_in_mins
        out_of_time = bool(limit) and time.perf_counter() - started >= 60.0 * limit
        signalled, out_of_time = _any_rank(stop.signalled, out_of_time)
        if signalled:
            return 'signal'
        if out_of_time:
            return '--exit-duration-in-mins'
        return '--exit-interval' if self._exit_interval_reached() else None

    def _exit_interval_reached(self) -> bool:
        interval = self.train_cfg.exit_interval
        return bool(interval) and self.iteration % interval == 0 and self.iteration < self.train_cfg.train_iters

    def log(self, window, seconds, started, start_iteration):
        steps = len(window)
        tokens = self.train_cfg.global_batch_size * self.cfg.seq_length
        frames, heads, frames_squared, pairs = (sum(w[2][i] for w in window) / steps for i in range(4))
        flops = batch_flops(self.cfg, self.train_cfg.global_batch_size, self.cfg.seq_length, frames,
                            int(frames_squared / max(frames, 1)) or 1, heads, llm=self.runs_llm,
                            attended_pairs=pairs)
        world = torch.distributed.get_world_size()
        finite = [w[0] for w in window if math.isfinite(w[0])]
        norms = [w[1] for w in window if math.isfinite(w[1])]  # skipped steps' norms may not be
        record = {'iteration': self.iteration, 'consumed_samples': self.train_loader.consumed_samples,
                  'lr': self.optimizer.param_groups[0]['lr']}
        if self.runs_llm:  # else ctc_metrics gives the loss
            record['lm loss'] = sum(finite) / len(finite) if finite else float('nan')
        # Throughput of what runs: LLM tokens, or encoder frames with --training-mode encoder_ctc.
        rate_key, per_step = ('tokens_per_s', tokens) if self.runs_llm else ('encoder_frames_per_s', frames)
        record.update({'grad_norm': sum(norms) / len(norms) if norms else float('nan'),
                       'skipped_iterations': self.skipped,
                       'step_ms': 1000 * seconds / steps, 'data_wait_ms': 1000 * sum(w[3] for w in window) / steps,
                       rate_key: per_step * steps / seconds,
                       'tflops_per_gpu': flops * steps / seconds / world / 1e12,
                       'peak_mem_gb': peak_memory_gb()})
        record.update(mtp_metrics(self.model))
        record.update(ctc_metrics(self.model, self.cfg))
        record.update(moe_metrics(steps * self.num_microbatches, self.cfg.mtp_depths))
        done = self.iteration - start_iteration
        eta = (time.perf_counter() - started) / done * (self.train_cfg.train_iters - self.iteration)
        if _reporting_rank():
            print(train_line(record, self.train_cfg.train_iters, eta), flush=True)
        self.metrics.log(record)


# Megatron-Core's DDP logs every parameter's name per gradient bucket (~90 lines for the tiny model,
# thousands for 8B) at INFO: shown only at --logging-level 10 (debug).
CHATTY_LOGGERS = ('megatron.core.distributed.param_and_grad_buffer',)


def train(run: RunConfig) -> None:
    level = run.train.logging_level if run.train.logging_level is not None else logging.INFO
    logging.basicConfig(level=level, stream=sys.stdout, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if level > logging.DEBUG else level)
    try:
        trainer = Trainer(run)
    except ConfigError:  # raised on every rank alike, before anything is in flight
        release_distributed()
        raise
    try:
        try:
            trainer.fit()
        finally:
            trainer.graphs.close()
            trainer.metrics.close()
    except RunError:  # raised on every rank alike (a failed background write is reported to all)
        release_distributed()
        raise
    release_distributed()
