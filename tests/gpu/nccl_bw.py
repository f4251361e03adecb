"""NCCL bandwidth between the GPUs of one host, for the message sizes of the SALM's collectives:
`torchrun --nproc-per-node N tests/gpu/nccl_bw.py` prints the time and algorithm bandwidth of
all-reduce and all-gather at 32 MB and 256 MB per rank (10 timed calls after 3 warm-up calls)."""

import time

import torch
import torch.distributed as dist

SIZES_MB = (32, 256)


def timed(call, repeats: int = 10) -> float:
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    dist.init_process_group('nccl')
    rank = dist.get_rank()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    for mb in SIZES_MB:
        x = torch.ones(mb * 2**20 // 2, dtype=torch.bfloat16, device='cuda')
        gathered = torch.empty(x.numel() * dist.get_world_size(), dtype=x.dtype, device='cuda')
        for name, call in (('all_reduce', lambda x=x: dist.all_reduce(x)),
                           ('all_gather', lambda x=x, out=gathered: dist.all_gather_into_tensor(out, x))):
            seconds = timed(call)
            if rank == 0:
                print(f'{name} {mb} MB per rank: {seconds * 1e3:.2f} ms, '
                      f'{mb / 1024 / seconds:.1f} GB/s algorithm bandwidth', flush=True)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
