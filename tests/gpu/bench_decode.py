"""Decoding speed of a checkpoint on one GPU: greedy and speculative, eager and with CUDA graphs.

    python tests/gpu/bench_decode.py --load CKPT --manifest test.jsonl [--batch-sizes 1 8]
        [--max-utterances 64] [--max-new-tokens 64] [--mtp-draft-depth D] [--hbm-tb-per-s 4.8]
        [--out bench.json]

Modes, each over the same batches: greedy at width 1 (eager, graphs), greedy at width D+1 with
graphs (the greedy that speculative decoding reproduces bit for bit), speculative (eager, graphs).
Each mode decodes every batch once untimed (graphs captured, caches allocated) then once timed.
Per mode: tokens/s of the whole decode; seconds of audio encoding, of the prefill and of the steps
after it; steps, milliseconds per step and tokens per step; then speculative step cost / greedy
step cost. The bound: bytes of the weights one greedy step reads (decoder and output head) over
the HBM bandwidth, as tokens/s of one row (KV reads of short transcripts are negligible beside
them). On a CPU the graph modes are skipped.
"""

import argparse
import json
import os
import sys
import time

import torch

from megatron_salm_mtp.inference.decode import greedy_decode, speculative_decode
from megatron_salm_mtp.inference.inputs import make_batch, read_utterances, stop_ids
from megatron_salm_mtp.inference.loading import load_for_inference
from megatron_salm_mtp.inference.workspace import WorkspacePool


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--load', required=True)
    p.add_argument('--manifest', required=True)
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    p.add_argument('--max-utterances', type=int, default=64)
    p.add_argument('--max-new-tokens', type=int, default=64)
    p.add_argument('--mtp-draft-depth', type=int, help='default: the trained MTP depths')
    p.add_argument('--hbm-tb-per-s', type=float, default=4.8, help='memory bandwidth (H200: 4.8)')
    p.add_argument('--out', help='JSON path (default: print)')
    return p.parse_args(argv)


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def greedy_step_bytes(lm) -> int:
    """Weights one greedy step reads: decoder layers, final norm and output head."""
    head = (lm.shared_embedding_or_output_weight() if lm.share_embeddings_and_output_weights
            else lm.output_layer.weight)
    return weight_bytes(lm.decoder) + head.numel() * head.element_size()


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_mode(decode, batches):
    """Figures of ``decode(batch, pool)`` over ``batches``, after an untimed pass."""
    for batch in batches:
        decode(batch)
    _synchronize()
    start = time.perf_counter()
    tokens = rows = steps = 0
    encode = prefill = 0.0
    for batch in batches:
        outputs, stats = decode(batch)
        tokens += sum(len(o) for o in outputs)
        rows += len(outputs)
        steps += max(s.verify_steps for s in stats)  # loop iterations of the batch
        encode += sum(s.encode_seconds for s in stats)
        prefill += sum(s.prefill_seconds for s in stats)
    _synchronize()
    seconds = time.perf_counter() - start
    after = seconds - encode - prefill
    return {'tokens': tokens, 'seconds': seconds, 'tokens_per_s': tokens / seconds,
            'encode_seconds': encode, 'prefill_seconds': prefill, 'step_seconds': after,
            'steps': steps, 'ms_per_step': 1000 * after / max(steps, 1),
            'tokens_per_step': (tokens - rows) / max(steps, 1),  # the prefill emits each row's first
            'step_tokens_per_s': (tokens - rows) / after}


def main(argv=None):
    args = parse(argv)
    loaded = load_for_inference(args.load)
    cfg, tok, model = loaded.cfg, loaded.tokenizer, loaded.model
    depth = args.mtp_draft_depth or cfg.mtp_depths
    utterances = read_utterances(args.manifest, loaded.data, tok)[:args.max_utterances]
    stops, vocab = stop_ids(tok, loaded.data.prompt_template), cfg.vocab_size
    device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
    graphs = [False, True] if torch.cuda.is_available() else [False]
    lm = model.language_model
    step_bytes = greedy_step_bytes(lm)
    report = {'checkpoint': os.path.abspath(args.load), 'utterances': len(utterances),
              'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
              'dtype': 'bf16' if cfg.bf16 else 'fp32', 'draft_depth': depth,
              'parameters': sum(p.numel() for p in model.parameters()),
              'llm_parameters_bytes': weight_bytes(lm), 'greedy_step_weight_bytes': step_bytes,
              'bandwidth_bound_tokens_per_s_per_row': args.hbm_tb_per_s * 1e12 / step_bytes,
              'batches': {}}
    for size in args.batch_sizes:
        batches = [make_batch(utterances[i:i + size], tok.pad_id, cfg.num_mel_bins, device)
                   for i in range(0, len(utterances), size)]
        modes = {}
        for cuda_graphs in graphs:
            pool = WorkspacePool(cuda_graphs)
            suffix = '_graphs' if cuda_graphs else '_eager'
            modes['greedy' + suffix] = time_mode(lambda b: greedy_decode(
                model, b, args.max_new_tokens, stops, vocab, workspaces=pool), batches)
            if depth:
                if cuda_graphs:
                    modes[f'greedy_width{depth + 1}' + suffix] = time_mode(lambda b: greedy_decode(
                        model, b, args.max_new_tokens, stops, vocab, width=depth + 1,
                        workspaces=pool), batches)
                modes['speculative' + suffix] = time_mode(lambda b: speculative_decode(
                    model, b, args.max_new_tokens, stops, vocab, depth, workspaces=pool), batches)
        fastest = 'graphs' if len(graphs) == 2 else 'eager'
        if depth:
            modes['speculative_step_cost_vs_greedy'] = (modes[f'speculative_{fastest}']['ms_per_step']
                                                        / modes[f'greedy_{fastest}']['ms_per_step'])
            modes['speculative_speedup'] = (modes[f'speculative_{fastest}']['tokens_per_s']
                                            / modes[f'greedy_{fastest}']['tokens_per_s'])
        report['batches'][str(size)] = modes
        print(f'batch {size}: ' + ', '.join(f'{name} {m["tokens_per_s"]:.0f} tok/s '
                                           f'({m["ms_per_step"]:.2f} ms/step)'
                                           for name, m in modes.items() if isinstance(m, dict)),
              file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text, flush=True)


if __name__ == '__main__':
    main()
