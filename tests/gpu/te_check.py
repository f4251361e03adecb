"""GPU check with Transformer Engine: the SALM with D=2 MTP heads and the encoder's CTC loss in
bf16, one global batch on one GPU and at TP=2 with sequence parallelism on two; losses and
gradients (the replicated CTC head's included) must agree within bf16
tolerance. Both run with gradient accumulation fusion (the default); a third run on one GPU without
it must give the same loss and gradients (fp32 accumulation inside the GEMM instead of a bf16
weight gradient added afterwards). Prints the figures; exits non-zero on a mismatch.

    python -m tests.gpu.te_check --out DIR   (from the repository root; needs 2 GPUs, Transformer Engine, megatron-core)
"""

import argparse
import os
import sys
import time

import torch

from tests.support.parallel_utils import init_weights, run_layout, speech_batch, tiny_config


def gpu_config(**overrides):
    base = dict(num_layers=4, hidden_size=256, ffn_hidden_size=704, num_attention_heads=8,
                num_query_groups=4, vocab_size=1024, seq_length=256, num_mel_bins=80,
                encoder_num_layers=2, encoder_hidden_size=256, encoder_num_attention_heads=8,
                encoder_max_source_positions=1500, mtp_num_layers=2, ctc_loss_weight=0.3, bf16=True,
                transformer_impl='transformer_engine', audio_token_id=259)
    base.update(overrides)
    return tiny_config(**base)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = gpu_config()
    init_weights(cfg, args.out)
    batch = speech_batch(cfg, 8, seed=7)
    torch.save(batch, os.path.join(args.out, 'batch.pt'))
    weights = os.path.join(args.out, 'weights.pt')
    results = {}
    for name, tag, layout, nproc in (
            ('1 GPU', 'gpu1', cfg, 1),
            ('TP=2 + SP, 2 GPUs', 'tp2sp', cfg.replace(tensor_model_parallel_size=2,
                                                       sequence_parallel=True), 2),
            ('1 GPU, unfused wgrad', 'gpu1_unfused', cfg.replace(gradient_accumulation_fusion=False), 1)):
        start = time.time()
        loss, grads, _, ranks = run_layout(layout, weights, os.path.join(args.out, 'batch.pt'),
                                           os.path.join(args.out, tag),
                                           nproc, microbatches=2)
        mtp = [r['metrics'] for r in ranks if r['metrics']][0]
        results[name] = (loss, grads)
        print(f'{name}: lm loss {loss:.5f}  ' + '  '.join(f'{k} {v:.4f}' for k, v in mtp.items())
              + f'  ({time.time() - start:.1f} s incl. start-up)')
    (loss1, grads1), (loss2, grads2), (loss_unfused, grads_unfused) = results.values()
    worst = min(cosine(grads1[n], grads2[n]) for n in grads1)
    rel = abs(loss1 - loss2) / abs(loss1)
    print(f'step-1 loss relative difference {rel:.2e}; worst gradient cosine similarity {worst:.5f}')
    worst_fusion = min(cosine(grads1[n], grads_unfused[n]) for n in grads1)
    print(f'wgrad fusion on/off, 1 GPU: loss {loss1:.6f} / {loss_unfused:.6f}; '
          f'worst gradient cosine similarity {worst_fusion:.6f}')
    ok = rel < 2e-2 and worst > 0.99 and abs(loss1 - loss_unfused) < 1e-5 * abs(loss1) and worst_fusion > 0.999
    print('PASS' if ok else 'FAIL')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
