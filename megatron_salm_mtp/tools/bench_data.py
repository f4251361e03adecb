"""Data-loading benchmark: ``python -m megatron_salm_mtp.tools.bench_data --manifest M [--num-workers N]``.

Runs the real path (manifest -> decode -> resample -> log-mel -> prompt -> collate) through the
DataLoader for one pass over the manifest and prints utterances/s and audio-seconds/s, in total and
per worker, so one can size ``--num-workers`` against the GPUs' consumption rate. Without workers,
the main process is the one worker (run with one torch thread, as DataLoader workers are). The clock
starts after the first batch, so worker start-up is left out.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..data.loader import DataConfig, build_dataloader


def run(manifest: str, num_workers: int = 0, micro_batch_size: int = 8, n_mels: int = 80, seq_length: int = 4096,
        max_duration: float | None = None, limit: int | None = None) -> dict:
    cfg = DataConfig(seq_length=seq_length, micro_batch_size=micro_batch_size, global_batch_size=micro_batch_size,
                     num_workers=num_workers, n_mels=n_mels, max_duration=max_duration, pad_to_seq_length=False,
                     pack_sequences=False)  # decoding throughput: one utterance per row, none refused for room
    threads = torch.get_num_threads()
    if num_workers == 0:
        torch.set_num_threads(1)  # measure the main process as one DataLoader worker (workers get 1 thread)
    try:
        return _measure(build_dataloader(cfg, manifest, shuffle=False), micro_batch_size, num_workers, limit)
    finally:
        torch.set_num_threads(threads)


def _measure(loader, micro_batch_size: int, num_workers: int, limit: int | None) -> dict:
    total_batches = len(loader) if limit is None else min(len(loader), max(1, limit // micro_batch_size))
    it = iter(loader)
    utts = frames = 0
    start = time.perf_counter()
    for k in range(total_batches):
        batch = next(it)
        if k == 0 and total_batches > 1:  # worker start-up is not throughput: clock starts after batch 1
            start = time.perf_counter()
            continue
        utts += batch['audio_feature_lengths'].numel()
        frames += int(batch['audio_feature_lengths'].sum())
    elapsed = time.perf_counter() - start
    audio_seconds = frames / 100.0  # 10 ms per mel frame
    workers = max(1, num_workers)
    return {'utterances': utts, 'audio_seconds': audio_seconds, 'elapsed_s': elapsed,
            'utt_per_s': utts / elapsed, 'audio_s_per_s': audio_seconds / elapsed,
            'utt_per_s_per_worker': utts / elapsed / workers,
            'audio_s_per_s_per_worker': audio_seconds / elapsed / workers,
            'num_workers': num_workers, 'skips': loader.skip_counts()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--manifest', required=True, help='JSONL manifest(s), comma-separated')
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--micro-batch-size', type=int, default=8)
    p.add_argument('--n-mels', type=int, default=80, choices=(80, 128))
    p.add_argument('--limit', type=int, default=None, help='stop after about this many utterances')
    a = p.parse_args(argv)
    r = run(a.manifest, a.num_workers, a.micro_batch_size, a.n_mels, limit=a.limit)
    print(f"{r['utterances']} utterances, {r['audio_seconds']:.1f} s of audio in {r['elapsed_s']:.2f} s "
          f"with {r['num_workers']} workers: {r['utt_per_s']:.1f} utt/s, {r['audio_s_per_s']:.1f} audio-s/s total; "
          f"per worker {r['utt_per_s_per_worker']:.1f} utt/s, {r['audio_s_per_s_per_worker']:.1f} audio-s/s"
          + (f"; skipped {r['skips']}" if r['skips'] else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
