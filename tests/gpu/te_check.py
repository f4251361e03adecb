"""GPU check with Transformer Engine: the SALM with D=2 MTP heads in bf16, one global batch on one
GPU and at TP=2 with sequence parallelism on two; losses and gradients must agree within bf16
tolerance. Prints the figures; exits non-zero on a mismatch.

    python tests/gpu/te_check.py --out DIR   (needs 2 GPUs, Transformer Engine, megatron-core)
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from parallel_utils import init_weights, run_layout, speech_batch, tiny_config  # noqa: E402


def gpu_config(**overrides):
    base = dict(num_layers=4, hidden_size=256, ffn_hidden_size=704, num_attention_heads=8,
                num_query_groups=4, vocab_size=1024, seq_length=256, num_mel_bins=80,
                encoder_num_layers=2, encoder_hidden_size=256, encoder_num_attention_heads=8,
                encoder_max_source_positions=1500, mtp_num_layers=2, bf16=True,
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
                                                       sequence_parallel=True), 2)):
        start = time.time()
        loss, grads, _, ranks = run_layout(layout, weights, os.path.join(args.out, 'batch.pt'),
                                           os.path.join(args.out, tag),
                                           nproc, microbatches=2)
        mtp = [r['metrics'] for r in ranks if r['metrics']][0]
        results[name] = (loss, grads)
        print(f"{name}: lm loss {loss:.5f}  " + '  '.join(f'{k} {v:.4f}' for k, v in mtp.items())
              + f"  ({time.time() - start:.1f} s incl. start-up)")
    (loss1, grads1), (loss2, grads2) = results.values()
    worst = min(cosine(grads1[n], grads2[n]) for n in grads1)
    rel = abs(loss1 - loss2) / abs(loss1)
    print(f"step-1 loss relative difference {rel:.2e}; worst gradient cosine similarity {worst:.5f}")
    ok = rel < 2e-2 and worst > 0.99
    print('PASS' if ok else 'FAIL')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
