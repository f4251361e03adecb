"""Saves a tiny random SALM checkpoint (no optimizer) at the layout of its launch:

    torchrun --nproc-per-node N tests/support/inference_ckpt.py --out DIR --tensor-model-parallel-size N \\
        [--mtp-num-layers D] [--ctc-loss-weight W]

The resolved run configuration (byte tokenizer, plain template, 80 mels) is stored beside it, as
training stores it, so ``python -m megatron_salm_mtp.evaluate --load DIR`` can read it.
"""

import argparse

TINY_MODEL = ['--num-layers', '2', '--hidden-size', '32', '--ffn-hidden-size', '48',
              '--num-attention-heads', '4', '--num-query-groups', '2', '--encoder-num-layers', '1',
              '--encoder-hidden-size', '32', '--encoder-num-attention-heads', '4',
              '--seq-length', '256', '--make-vocab-size-divisible-by', '16', '--init-method-std', '0.3']


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    parser.add_argument('--tensor-model-parallel-size', default='1')
    parser.add_argument('--mtp-num-layers', default='2')
    parser.add_argument('--ctc-loss-weight', default='0', help='> 0: a CTC head on characters too')
    args = parser.parse_args()
    from megatron_salm_mtp.checkpoint.save_load import save_checkpoint
    from megatron_salm_mtp.cli import parse_args
    from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel
    run = parse_args(TINY_MODEL + ['--tensor-model-parallel-size', args.tensor_model_parallel_size,
                                   '--mtp-num-layers', args.mtp_num_layers, '--ctc-loss-weight', args.ctc_loss_weight,
                                   '--ctc-target-units', 'characters', '--train-manifest', 'unused'])
    init_distributed()
    init_model_parallel(run.model, seed=7)
    model = build_model(run.model, wrap_ddp=False)
    save_checkpoint(args.out, 1, model, None, None, {}, run.resolved())


if __name__ == '__main__':
    main()
