"""Benchmark the real training step: ``python -m megatron_salm_mtp.tools.bench_train --config C.yaml [flags]``.

Runs forward, backward and the optimizer step of the configured layout (any training flag works:
``--tensor-model-parallel-size``, ``--use-distributed-optimizer``, ``--bf16``, ...) on synthetic
batches after warm-up, for the configuration without MTP and with it, in the same process, and
prints step time, tokens/s, TFLOP/s per GPU and MFU (model FLOPs of ``training/flops.py`` against
the GPU's bf16 dense peak), peak memory, and the MTP overhead as a ratio of the two runs. With
``--compare-cross-entropy-fusion`` every configuration runs again with the fused linear +
cross-entropy head (``--cross-entropy-fusion-impl linear``), from the same initial weights; with
``--compare-cuda-graphs`` every configuration runs eagerly and with the given ``--cuda-graph-impl``.
With ``--compare-packing`` the batches are utterances of a realistic length mix
(``data/length_mix.py``: read speech's long-tailed durations, 1 s to ``--max-duration``, answers of
matching length), laid out one per row padded to ``--seq-length`` and then packed as training packs
them, the same rows per step; each layout reports useful tokens per second (positions that are not
padding) beside MFU (model FLOPs: packed attention counted within each utterance).

    torchrun --nproc-per-node 2 -m megatron_salm_mtp.tools.bench_train --config configs/salm_1b_8gpu.yaml \\
        --tensor-model-parallel-size 2 --mtp-num-layers 2
"""

import argparse
import gc
import json
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallelConfig
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ..cli import exit_on_config_error, parse_args
from ..config import ConfigError, SALMConfig
from ..data.frames import encoder_frames
from ..parallel.setup import build_model, init_distributed, init_model_parallel, seed_for_model
from ..training.cuda_graphs import LayerGraphs
from ..training.flops import attended_pairs, batch_flops, head_evaluations
from ..training.host_syncs import recorded_host_syncs
from ..training.optim import build_optimizer
from ..training.step import forward_backward
from .bench_rows import Workload, describe_rows, workloads

BF16_DENSE_PEAK = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # vendor figures, FLOP/s


def _peak_flops(override):
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return float('nan')
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_DENSE_PEAK.items() if key in name), float('nan'))


FOREIGN_MEMORY_WARN_GB = 4.0  # more than a CUDA context and NCCL buffers: another process's work


def foreign_memory_gb() -> float:
    """GPU memory in use by others on this rank's device (0 on CPU): total in use minus what this
    process's allocator holds. A stray process (an orphaned rank of an earlier job, say) shares
    the SMs too and makes every figure of the run wrong, so the report says so."""
    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return max(0.0, (total - free - torch.cuda.memory_reserved()) / 2**30)


def foreign_memory_warning(per_rank_gb) -> str:
    """A warning line naming the ranks whose GPU holds another process's memory ('' if none)."""
    busy = [f'rank {rank}: {gb:.1f} GB' for rank, gb in enumerate(per_rank_gb) if gb > FOREIGN_MEMORY_WARN_GB]
    if not busy:
        return ''
    return ('WARNING: other processes hold GPU memory (' + ', '.join(busy) +
            '); they share the GPU, so these figures are not clean: free the GPUs and run again')


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def busy_microseconds(intervals) -> float:
    """Length of the union of (start, end) intervals: kernels that overlap (streams) or that the
    profiler records twice count once, so the busy time never exceeds the wall time."""
    total, reach = 0.0, float('-inf')
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_steps(train_step, out_dir: str, name: str, steps: int = 2) -> None:
    """Profile ``steps`` more steps: per-op table sorted by device time, and the share of the wall
    time the GPU was busy (low: the step waits on the host)."""
    os.makedirs(out_dir, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    _sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step()
        _sync()
    wall_us = (time.perf_counter() - start) * 1e6
    device_us = busy_microseconds((e.time_range.start, e.time_range.end) for e in prof.events()
                                  if e.device_type == DeviceType.CUDA)
    rank = torch.distributed.get_rank()
    with open(os.path.join(out_dir, f'{name}_rank{rank}.txt'), 'w') as f:
        f.write(f'{steps} steps: wall {wall_us / 1e3:.1f} ms, device busy {device_us / 1e3:.1f} ms '
                f'({device_us / wall_us:.0%})\n')
        sort = 'self_device_time_total' if torch.cuda.is_available() else 'self_cpu_time_total'
        f.write(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70))


def head_label(cfg: SALMConfig) -> str:
    """How the configuration computes the heads' loss (and graphs its layers), for the report."""
    if cfg.fused_linear_cross_entropy:
        label = 'fused linear CE'
    else:
        label = f'row chunks {cfg.head_chunk_rows}' if cfg.head_chunk_rows else 'logits kept'
    return label if cfg.cuda_graph_impl == 'none' else f'{label}, graphs {cfg.cuda_graph_impl}'


def graph_variants(cfg: SALMConfig, compare: bool, warmup_iters: int) -> list:
    """``cfg`` alone, or eager then as given with ``--compare-cuda-graphs``; the timed steps must
    replay graphs, so the untimed ones cover their recording or capture."""
    impl = cfg.cuda_graph_impl
    if compare and impl == 'none':
        raise ConfigError('--compare-cuda-graphs compares eager steps with graphed ones: give --cuda-graph-impl')
    needed = cfg.cuda_graph_warmup_steps + 1 if impl == 'transformer_engine' else 1
    if impl != 'none' and warmup_iters < needed:
        raise ConfigError(f'--warmup-iters {warmup_iters}: with --cuda-graph-impl {impl} the first {needed} '
                          f'step(s) run eagerly to record or capture the graphs; give --warmup-iters >= {needed}')
    return [cfg.replace(cuda_graph_impl='none', cuda_graph_scope=None), cfg] if compare else [cfg]


def fused_head(cfg: SALMConfig) -> SALMConfig:
    """``cfg`` with the fused linear + cross-entropy head (which needs no row chunks)."""
    if cfg.fused_linear_cross_entropy:
        raise ConfigError('--compare-cross-entropy-fusion compares the configured head with the fused one: '
                          'drop --cross-entropy-fusion-impl linear')
    return cfg.replace(cross_entropy_loss_fusion=True, cross_entropy_fusion_impl='linear', head_chunk_rows=0)


def measure(run, bench, depths: int, model: SALMConfig, workload: Workload) -> dict:
    """Build ``model`` with ``depths`` MTP layers, time ``bench.timed_iters`` training steps."""
    cfg = model.replace(mtp_num_layers=depths or None)
    train = run.train
    # every configuration starts from the same trunk weights (a graph-safe tracker draws the same)
    seed_for_model(cfg, train.seed)
    dp = parallel_state.get_data_parallel_world_size()
    ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.overlap_grad_reduce,
                                        use_distributed_optimizer=cfg.use_distributed_optimizer,
                                        overlap_param_gather=cfg.overlap_param_gather)
    model = build_model(cfg, ddp)
    optimizer, scheduler = build_optimizer(model, train, cfg)
    graphs = LayerGraphs(model, cfg, train.micro_batch_size, train.global_batch_size, optimizer)
    microbatches = workload.microbatches
    if torch.cuda.is_available():
        # pinned, as the training loaders pin theirs
        microbatches = [{key: value.pin_memory() for key, value in batch.items()} for batch in microbatches]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    syncs = {'forward_backward': Counter(), 'optimizer': Counter()}
    lm_loss = []  # main-head loss per step (same batches each step: it falls, and reruns agree)

    def train_step(audit=False):
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        with recorded_host_syncs(syncs['forward_backward']) if audit else nullcontext():
            totals = forward_backward(model, microbatches, cfg)
        with recorded_host_syncs(syncs['optimizer']) if audit else nullcontext():
            optimizer.step()
        scheduler.step(increment=train.global_batch_size)  # as training does (lr 0 would not train)
        return totals.mean

    times = []
    for step in range(bench.warmup_iters + bench.timed_iters):
        graphs.before_step(step)
        _sync()
        start = time.perf_counter()
        lm_loss.append(train_step())
        _sync()
        if step >= bench.warmup_iters:
            times.append(time.perf_counter() - start)
    step_s = sum(times) / len(times)
    if bench.profile_dir:
        profile_steps(train_step, bench.profile_dir,
                      f"{'' if workload.rows == 'synthetic' else workload.rows + '_'}mtp{depths}"
                      f"{'_fused_ce' if cfg.fused_linear_cross_entropy else ''}"
                      f"{'' if cfg.cuda_graph_impl == 'none' else '_graphs_' + cfg.cuda_graph_impl}")
    if bench.list_host_syncs:
        train_step(audit=True)
    lengths = [encoder_frames(int(n)) for b in microbatches for n in b['audio_feature_lengths']]
    frames = dp * sum(lengths)
    per_utt = int(sum(t * t for t in lengths) / max(sum(lengths), 1)) or 1  # what each frame attends
    heads = dp * head_evaluations(microbatches, cfg)
    flops = batch_flops(cfg, train.global_batch_size, cfg.seq_length, frames, per_utt, heads,
                        attended_pairs=dp * attended_pairs(microbatches))
    world = torch.distributed.get_world_size()
    result = {'mtp_depths': depths, 'head': head_label(cfg), 'rows': workload.rows, 'step_ms': 1000 * step_s,
              'tokens_per_s': train.global_batch_size * cfg.seq_length / step_s,
              'useful_tokens_per_s': dp * workload.useful_tokens / step_s,
              'audios': dp * len(lengths),
              'tflops_per_gpu': flops / step_s / world / 1e12,
              'peak_mem_gb': torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float('nan'),
              'lm_loss_per_step': lm_loss, 'cuda_graphs': graphs.count()}
    if bench.list_host_syncs:
        result['host_syncs'] = {phase: dict(sites) for phase, sites in syncs.items()}
    if cfg.overlap_param_gather:  # its forward pre-hooks keep the model alive (seen: +8 GB per depth)
        for chunk in model:
            chunk.disable_forward_pre_hook(param_sync=False)
    graphs.close()
    model = optimizer = graphs = None  # drop them (and train_step's view of them) before collecting
    gc.collect()
    return result


def host_sync_report(result) -> str:
    """Lines naming where one step of ``result``'s configuration made the host wait (last rank)."""
    lines = []
    for phase, sites in result['host_syncs'].items():
        lines.append(f"host syncs, D={result['mtp_depths']}, {phase}: {sum(sites.values())}")
        lines += [f'  {calls:4d}  {site}' for site, calls in sorted(sites.items(), key=lambda kv: -kv[1])]
    return '\n'.join(lines)


def rows_label(result) -> str:
    return '' if result['rows'] == 'synthetic' else f", {result['rows']} rows"


def print_table(results, depths: int, peak: float) -> None:
    """The figures of each run, the MTP overhead per head, the fused head against the other, and
    packed rows against padded ones."""
    print(f"{'head':>16} | {'rows':>9} | {'MTP depths':>10} | {'step ms':>8} | {'tokens/s':>9} | "
          f"{'useful tok/s':>12} | {'TFLOP/s/GPU':>11} | {'MFU':>6} | {'peak GB':>7} | last lm loss")
    for r in results:
        r['mfu'] = r['tflops_per_gpu'] * 1e12 / peak
        print(f"{r['head']:>16} | {r['rows']:>9} | {r['mtp_depths']:>10} | {r['step_ms']:8.1f} | "
              f"{r['tokens_per_s']:9.0f} | {r['useful_tokens_per_s']:12.0f} | {r['tflops_per_gpu']:11.1f} | "
              f"{r['mfu']:6.1%} | {r['peak_mem_gb']:7.2f} | {r['lm_loss_per_step'][-1]:.6f}")
    runs = 2 if depths else 1  # per head and rows: D=0 (and D) in order
    groups = [results[i:i + runs] for i in range(0, len(results), runs)]
    for base, *mtp in groups:
        if mtp:
            print(f"MTP overhead per depth: {(mtp[0]['step_ms'] / base['step_ms'] - 1) / depths:.1%} of step "
                  f"time, {(mtp[0]['peak_mem_gb'] - base['peak_mem_gb']) / depths:.2f} GB ({base['head']}"
                  f"{rows_label(base)})")
    for padded, packed in zip(results, results[runs:]):
        if (padded['rows'], packed['rows'], padded['head']) == ('padded', 'packed', packed['head']):
            print(f"packed vs padded, {packed['head']}, D={packed['mtp_depths']}: useful tokens/s "
                  f"x{packed['useful_tokens_per_s'] / padded['useful_tokens_per_s']:.2f}, MFU "
                  f"{packed['mfu']:.1%} vs {padded['mfu']:.1%} "
                  f"({100 * (packed['mfu'] - padded['mfu']):+.1f} points), step time "
                  f"{packed['step_ms'] / padded['step_ms'] - 1:+.1%}, peak memory "
                  f"{packed['peak_mem_gb'] - padded['peak_mem_gb']:+.2f} GB")
    labels = list(dict.fromkeys(r['head'] for r in results))
    by_head = [[r for r in results if r['head'] == label] for label in labels]
    for other in by_head[1:]:  # each variant against the first (eager, configured head)
        for plain, changed in zip(by_head[0], other):
            print(f"{changed['head']} vs {plain['head']}, D={plain['mtp_depths']}{rows_label(plain)}: step time "
                  f"{changed['step_ms'] / plain['step_ms'] - 1:+.1%}, peak memory "
                  f"{changed['peak_mem_gb'] - plain['peak_mem_gb']:+.2f} GB, layer graphs "
                  f"{changed['cuda_graphs']}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m megatron_salm_mtp.tools.bench_train', usage='%(prog)s [bench flags] [training flags]',
        description='Time the real training step (forward, backward, optimizer) on synthetic batches, '
                    'without MTP and with the configured --mtp-num-layers.',
        epilog='Every flag of `python -m megatron_salm_mtp.train --help` also works here (the model, '
               'the layout, --config ...).')
    parser.add_argument('--warmup-iters', type=int, default=3, help='untimed steps first (default 3)')
    parser.add_argument('--timed-iters', type=int, default=10, help='timed steps per configuration (default 10)')
    parser.add_argument('--audio-fraction', type=float, default=0.6, help='share of the sequence that is audio')
    parser.add_argument('--answer-fraction', type=float, default=0.25, help='supervised share')
    parser.add_argument('--text-only', action='store_true', help='LLM alone, every position supervised')
    parser.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak per GPU')
    parser.add_argument('--vocab-size', type=int, default=None, help='vocabulary (152k Qwen, 32k Llama-2)')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('--profile-dir', default=None,
                        help='profile 2 more steps per configuration; op tables written here')
    parser.add_argument('--list-host-syncs', action='store_true',
                        help="one more step under torch's sync debug mode: where the host waits for the GPU")
    parser.add_argument('--compare-cuda-graphs', action='store_true',
                        help='run each configuration eagerly and then with the given --cuda-graph-impl')
    parser.add_argument('--compare-cross-entropy-fusion', action='store_true',
                        help='also run each configuration with --cross-entropy-fusion-impl linear (the fused '
                             'linear + cross-entropy heads, no --head-chunk-rows)')
    parser.add_argument('--compare-packing', action='store_true',
                        help='utterances of a realistic length mix (read speech, 1 s to --max-duration, answers '
                             'of matching length) instead of synthetic rows, one per row padded to --seq-length, '
                             'then packed (--pack-window); reports useful tokens/s (not padding) beside MFU')
    bench, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        run = parse_args(rest)
        if bench.vocab_size:
            run.model.vocab_size = bench.vocab_size
        heads = [run.model] + ([fused_head(run.model)] if bench.compare_cross_entropy_fusion else [])
        heads = [v for head in heads for v in graph_variants(head, bench.compare_cuda_graphs, bench.warmup_iters)]
    except ConfigError as err:
        exit_on_config_error(err)
    init_distributed()
    init_model_parallel(run.model, run.train.seed)
    foreign = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(foreign, foreign_memory_gb())
    peak = _peak_flops(bench.peak_tflops)
    depths = run.model.mtp_depths
    batches = workloads(run, bench, run.model)
    results = [measure(run, bench, d, model, workload) for model in heads for workload in batches
               for d in ([0, depths] if depths else [0])]
    if torch.distributed.get_rank() != torch.distributed.get_world_size() - 1:
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'
    print(f'device: {torch.distributed.get_world_size()} x {device} | TP={run.model.tensor_model_parallel_size} '
          f'PP={run.model.pipeline_model_parallel_size} | seq {run.model.seq_length} x global batch '
          f'{run.train.global_batch_size} | bf16={run.model.bf16} | '
          f'{describe_rows(bench, batches, run.data.pack_window)}')
    warning = foreign_memory_warning(foreign)
    if warning:
        print(warning)
    print_table(results, depths, peak)
    for r in results:
        if 'host_syncs' in r:
            print(host_sync_report(r))
    if bench.json:
        with open(bench.json, 'w') as f:
            json.dump({'device': device, 'foreign_memory_gb_per_rank': foreign, 'results': results}, f, indent=1)


if __name__ == '__main__':
    main()
