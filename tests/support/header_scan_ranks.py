"""Builds one dataset twice on every rank of a gloo group, counting the audio headers each rank opens:

    torchrun --nproc-per-node N tests/support/header_scan_ranks.py MANIFEST OUT_DIR

Each rank writes OUT_DIR/rank{R}.json: {"reads": [paths opened by the first build],
"reads_again": [... by the second], "valid": [...], "lengths": [...], "skips": {reason: count},
"raised": the error a third build, without the cache, raised here when rank 1 alone cannot open a header}.
"""

import json
import os
import sys

import torch

from megatron_salm_mtp.data import header_scan
from megatron_salm_mtp.data.loader import DataConfig, build_dataset


def _denied(path):
    raise PermissionError(13, 'Permission denied', path)


def main():
    manifest, out = sys.argv[1:3]
    torch.distributed.init_process_group('gloo')
    reads, real = [], header_scan.audio_info
    header_scan.audio_info = lambda path: reads.append(path) or real(path)
    cfg = DataConfig(seq_length=128, micro_batch_size=2, global_batch_size=4, max_duration=5.0)
    dataset = build_dataset(cfg, [manifest])
    first = list(reads)
    reads.clear()
    again = build_dataset(cfg, [manifest])
    assert (again.valid, again.lengths) == (dataset.valid, dataset.lengths)
    reads_again, rank = list(reads), torch.distributed.get_rank()
    torch.distributed.barrier()
    if rank == 0:
        os.remove(header_scan.cache_path(manifest))
    else:
        header_scan.audio_info = _denied
    torch.distributed.barrier()
    try:
        build_dataset(cfg, [manifest])
        raised = None
    except Exception as e:  # the test expects the same error on every rank, and no rank left waiting
        raised = type(e).__name__
    with open(os.path.join(out, f'rank{rank}.json'), 'w') as f:
        json.dump({'reads': first, 'reads_again': reads_again, 'valid': dataset.valid, 'lengths': dataset.lengths,
                   'skips': dataset.skip_counts(), 'raised': raised}, f)
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
