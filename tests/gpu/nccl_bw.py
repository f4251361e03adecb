import os, time, torch, torch.distributed as dist
dist.init_process_group('nccl'); r = dist.get_rank(); torch.cuda.set_device(r)
for mb in (32, 256):
    x = torch.ones(mb * 2**20 // 2, dtype=torch.bfloat16, device='cuda'); out = torch.empty(x.numel() * 2, dtype=x.dtype, device='cuda')
    for op, f in (('all_reduce', lambda: dist.all_reduce(x)), ('all_gather', lambda: dist.all_gather_into_tensor(out, x))):
        for _ in range(3): f()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10): f()
        torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
        if r == 0: print(f'{op} {mb} MB per rank: {dt*1e3:.2f} ms, {mb/1024/dt:.1f} GB/s algorithm bandwidth', flush=True)
dist.destroy_process_group()
