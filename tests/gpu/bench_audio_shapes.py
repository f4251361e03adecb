"""What a new audio length costs the encoder on one GPU (``--audio-pad-multiple``).

    python -m tests.gpu.bench_audio_shapes [--config configs/asr_gpu_encoder.yaml] [--batches 60]
        [--multiples 1 64] [--micro-batch-size 128] [--out shapes.json]

The encoder of the config (Transformer Engine when importable: its fused attention builds a cuDNN
graph per shape on first use), in bf16, trains forward and backward on batches of random log-mel
whose longest audio is drawn uniformly from 1-20 s, as a length-bucketed loader gives them. Per
padding multiple: the milliseconds per step over ``--batches`` batches of fresh lengths (each padded
to the multiple), then over the same batches once more (every shape met before), and the distinct
shapes met. The difference of the two passes is what new shapes cost.
"""

import argparse
import json
import random
import time

import torch
from megatron.core import parallel_state

from megatron_salm_mtp.cli import parse_args as parse_training_flags
from megatron_salm_mtp.data.features import AudioPadding
from megatron_salm_mtp.model.provider import provide_salm
from megatron_salm_mtp.model.specs import resolve_transformer_impl
from megatron_salm_mtp.parallel.setup import init_distributed, set_seed


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='configs/asr_gpu_encoder.yaml')
    p.add_argument('--batches', type=int, default=60)
    p.add_argument('--multiples', type=int, nargs='+', default=[1, 64])
    p.add_argument('--micro-batch-size', type=int, default=128)
    p.add_argument('--out')
    return p.parse_args(argv)


def timed_steps(encoder, shapes, batch: int, n_mels: int) -> float:
    """Milliseconds per forward + backward step over batches of the given (longest, padded) frames."""
    device = torch.cuda.current_device()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for longest, frames in shapes:
        lengths = torch.randint(max(1, longest - 40), longest + 1, (batch,), device=device)
        lengths[0] = longest
        features = torch.randn(batch, n_mels, frames, device=device)
        encoder(features, lengths).float().square().mean().backward()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / len(shapes)


def main(argv=None):
    args = parse(argv)
    flags = parse_training_flags(['--config', args.config])
    cfg = flags.model.with_single_device_layout().replace(vocab_size=1040)
    init_distributed()
    parallel_state.initialize_model_parallel(1, 1)
    set_seed(1234)
    impl = resolve_transformer_impl(None)
    encoder = provide_salm(cfg.replace(transformer_impl=impl), impl).cuda().audio_encoder.train()
    rng = random.Random(0)
    warm = [(600, 600)] * 3
    timed_steps(encoder, warm, args.micro_batch_size, cfg.num_mel_bins)
    report = {'impl': impl, 'device': torch.cuda.get_device_name(), 'micro_batch_size': args.micro_batch_size,
              'config': args.config, 'multiples': {}}
    for multiple in args.multiples:
        padding = AudioPadding(multiple, 2000)
        longest = [rng.randint(100, 2000) for _ in range(args.batches)]
        shapes = [(n, padding.frames(n)) for n in longest]
        first = timed_steps(encoder, shapes, args.micro_batch_size, cfg.num_mel_bins)
        again = timed_steps(encoder, shapes, args.micro_batch_size, cfg.num_mel_bins)
        padded = sum(f for _, f in shapes) / sum(n for n, _ in shapes) - 1
        report['multiples'][multiple] = {'ms_per_step_new_lengths': round(first, 1),
                                         'ms_per_step_shapes_seen': round(again, 1),
                                         'distinct_shapes': len({f for _, f in shapes}),
                                         'padding_fraction': round(padded, 4)}
        print(f'multiple {multiple}: {first:.1f} ms/step with new lengths, {again:.1f} once seen, '
              f'{len({f for _, f in shapes})} shapes, {100 * padded:.1f} % padded frames', flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
