"""Decoding speed on one GPU (or the CPU): greedy and speculative, eager and with CUDA graphs, of a
checkpoint or of a randomly initialised model of a config's shape.

    python tests/gpu/bench_decode.py --load CKPT --manifest test.jsonl [--batch-sizes 1 8]
        [--max-utterances 64] [--max-new-tokens 64] [--mtp-draft-depth D] [--hbm-tb-per-s 4.8]
        [--count-ops] [--skip-timing] [--skip-eager] [--out bench.json]
    python tests/gpu/bench_decode.py --random-init configs/asr_gpu.yaml --mtp-num-layers 3 \\
        [--vocab-size 1040] [same options; training flags override the config's]

Modes, each over the same batches: greedy at width 1 (eager, graphs), greedy at width D+1 with
graphs (the greedy that speculative decoding reproduces bit for bit), speculative (eager, graphs).
Each mode decodes every batch once untimed (graphs captured, caches allocated) then once timed.
Per mode: tokens/s of the whole decode; seconds of audio encoding, of the prefill and of the steps
after it; steps, milliseconds per step and tokens per step; then speculative step cost / greedy
step cost (greedy at width 1, and with graphs at width D+1). With graphs, also the GPU time of one
step alone (its graph replayed 200 times) and the speculative / greedy-at-width-D+1 ratio of those
(``speculative_graph_replay_vs_greedy_widthD+1``): the cost of drafting, free of the host.
A random model (random prompts of 3-15 s of audio, no stop id: every row decodes
--max-new-tokens) has the shapes, hence the step costs, of the trained one; only the tokens per
step differ. The bound: bytes of the weights one greedy step reads (decoder and output head) over
the HBM bandwidth, as tokens/s of one row.

--count-ops: per batch size, operators (views excluded: about one GPU kernel each), FLOPs and host
reads of one eager step by part (``inference/step_profile.py``): greedy at width 1 and D+1, and
speculative (trunk, trunk head, each MTP depth, MTP heads, bookkeeping, glue). With --skip-timing
(the way to run it on a CPU), nothing is timed.
"""

import argparse
import json
import os
import sys
import time

import torch

from megatron_salm_mtp.cli import parse_args as parse_training_flags
from megatron_salm_mtp.data.frames import audio_tokens
from megatron_salm_mtp.inference.decode import PromptBatch, greedy_decode, speculative_decode
from megatron_salm_mtp.inference.inputs import make_batch, read_utterances, stop_ids
from megatron_salm_mtp.inference.loading import build_for_inference, load_for_inference
from megatron_salm_mtp.inference.step_profile import profile_steps
from megatron_salm_mtp.inference.workspace import WorkspacePool

REPLAYS = 200


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--load', help='checkpoint directory (with --manifest)')
    source.add_argument('--random-init', metavar='CONFIG', help='YAML config of a random model')
    p.add_argument('--manifest')
    p.add_argument('--vocab-size', type=int, default=1040,
                   help='with --random-init: the tokenizer vocabulary (the trained models: 1040)')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    p.add_argument('--max-utterances', type=int, default=64)
    p.add_argument('--max-new-tokens', type=int, default=64)
    p.add_argument('--mtp-draft-depth', type=int, help='default: the trained MTP depths')
    p.add_argument('--hbm-tb-per-s', type=float, default=4.8, help='memory bandwidth (H200: 4.8)')
    p.add_argument('--count-ops', action='store_true', help='operators per step, by part')
    p.add_argument('--skip-timing', action='store_true', help='no timed decoding (with --count-ops)')
    p.add_argument('--skip-eager', action='store_true', help='on a GPU, time the CUDA-graph modes only')
    p.add_argument('--out', help='JSON path (default: print)')
    args, model_flags = p.parse_known_args(argv)
    if args.load and (not args.manifest or model_flags):
        p.error(f'--load needs --manifest and takes no model flags (got {model_flags})')
    return args, model_flags


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def greedy_step_bytes(lm) -> int:
    """Weights one greedy step reads: decoder layers, final norm and output head."""
    head = (lm.shared_embedding_or_output_weight() if lm.share_embeddings_and_output_weights
            else lm.output_layer.weight)
    return weight_bytes(lm.decoder) + head.numel() * head.element_size()


def random_batches(cfg, utterances: int, size: int, device, seed: int = 0):
    """Prompts of 2 text ids, the placeholders of 3-15 s of random log-mels and 2 text ids."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for first in range(0, utterances, size):
        frames = torch.randint(300, 1501, (min(size, utterances - first),), generator=gen).tolist()
        rows = [torch.cat([torch.randint(0, 200, (2,), generator=gen),
                           torch.full((audio_tokens(f, cfg.audio_frame_stack),), cfg.audio_token_id),
                           torch.randint(0, 200, (2,), generator=gen)]) for f in frames]
        tokens = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        features = torch.zeros(len(rows), cfg.num_mel_bins, max(frames))
        for row, (ids, f) in enumerate(zip(rows, frames)):
            tokens[row, :len(ids)] = ids
            features[row, :, :f] = torch.randn(cfg.num_mel_bins, f, generator=gen)
        batches.append(PromptBatch(tokens.to(device), torch.tensor([len(r) for r in rows], device=device),
                                   features.to(device), torch.tensor(frames, device=device)))
    return batches


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


def replay_ms(pool: WorkspacePool, name: str, width: int) -> float:
    """GPU milliseconds of one step alone: the graph ``name`` of the widest-capacity workspace of
    that width, replayed ``REPLAYS`` times (its rows have finished: every kernel still runs)."""
    ws = max((w for w in pool.workspaces.values() if w.width == width and name in w.graphs),
             key=lambda w: w.capacity)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        ws.graphs[name].replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / REPLAYS


def time_modes(model, batches, depth: int, args, stops, vocab: int) -> dict:
    modes = {}
    for cuda_graphs in ([True] if args.skip_eager else [False, True]) if torch.cuda.is_available() else [False]:
        pool = WorkspacePool(cuda_graphs)
        suffix = '_graphs' if cuda_graphs else '_eager'
        modes['greedy' + suffix] = time_mode(lambda b, pool=pool: greedy_decode(
            model, b, args.max_new_tokens, stops, vocab, workspaces=pool), batches)
        if not depth:
            continue
        if cuda_graphs:
            modes[f'greedy_width{depth + 1}' + suffix] = time_mode(lambda b, pool=pool: greedy_decode(
                model, b, args.max_new_tokens, stops, vocab, width=depth + 1, workspaces=pool), batches)
        modes['speculative' + suffix] = time_mode(lambda b, pool=pool: speculative_decode(
            model, b, args.max_new_tokens, stops, vocab, depth, workspaces=pool), batches)
        if cuda_graphs:
            greedy, speculative = replay_ms(pool, 'greedy', depth + 1), replay_ms(pool, 'speculative', depth + 1)
            modes[f'greedy_width{depth + 1}' + suffix]['graph_replay_ms'] = greedy
            modes['speculative' + suffix]['graph_replay_ms'] = speculative
            modes[f'speculative_graph_replay_vs_greedy_width{depth + 1}'] = speculative / greedy
    fastest = 'graphs' if torch.cuda.is_available() else 'eager'
    if depth:
        for greedy in (f'greedy_{fastest}', f'greedy_width{depth + 1}_{fastest}'):
            if greedy in modes:
                modes[f'speculative_step_cost_vs_{greedy}'] = (modes[f'speculative_{fastest}']['ms_per_step']
                                                               / modes[greedy]['ms_per_step'])
        modes['speculative_speedup'] = (modes[f'speculative_{fastest}']['tokens_per_s']
                                        / modes[f'greedy_{fastest}']['tokens_per_s'])
    print(', '.join(f'{name} {m["tokens_per_s"]:.0f} tok/s ({m["ms_per_step"]:.2f} ms/step'
                    + (f', replay {m["graph_replay_ms"]:.3f} ms' if 'graph_replay_ms' in m else '') + ')'
                    for name, m in modes.items() if isinstance(m, dict)), file=sys.stderr, flush=True)
    return modes


def count_ops(model, batch, depth: int, args, vocab: int) -> dict:
    """Step profiles (eager) of greedy at width 1 and D+1 and of speculative decoding of ``batch``."""
    device, new = batch.tokens.device, min(args.max_new_tokens, 8)
    runs = {'greedy': lambda: greedy_decode(model, batch, new, [], vocab)}
    if depth:
        runs[f'greedy_width{depth + 1}'] = lambda: greedy_decode(model, batch, new, [], vocab, width=depth + 1)
        runs['speculative'] = lambda: speculative_decode(model, batch, new, [], vocab, depth)
    profiles = {name: profile_steps(run, device) for name, run in runs.items()}
    parts = list(dict.fromkeys(p for prof in profiles.values() for p in prof['ops']))
    print(f'{"operators per step":<20}' + ''.join(f'{n:>18}' for n in profiles), file=sys.stderr)
    for part in parts + ['total']:
        cells = [sum(p['ops'].values()) if part == 'total' else p['ops'].get(part, 0) for p in profiles.values()]
        flops = [sum(p['flops'].values()) if part == 'total' else p['flops'].get(part, 0) for p in profiles.values()]
        print(f'{part:<20}' + ''.join(f'{c:>8} {f / 1e6:>7.1f}MF' for c, f in zip(cells, flops)), file=sys.stderr)
    for key in ('host_reads_in_step', 'host_reads_between_steps'):
        print(f'{key:<20}' + ''.join(f'{p[key]:>18.2f}' for p in profiles.values()), file=sys.stderr, flush=True)
    return profiles


def main(argv=None):
    args, model_flags = parse(argv)
    if args.load:
        loaded = load_for_inference(args.load)
        cfg, tok, model = loaded.cfg, loaded.tokenizer, loaded.model
        utterances = read_utterances(args.manifest, loaded.data, tok)[:args.max_utterances]
        stops, source = stop_ids(tok, loaded.data.prompt_template), os.path.abspath(args.load)
    else:
        flags = parse_training_flags(['--config', args.random_init, *model_flags])
        model, cfg = build_for_inference(flags.model.replace(vocab_size=args.vocab_size))
        stops, source = [], f'random init of {args.random_init} {" ".join(model_flags)}'.strip()
    depth = cfg.mtp_depths if args.mtp_draft_depth is None else args.mtp_draft_depth
    vocab = cfg.vocab_size
    device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
    lm = model.language_model
    step_bytes = greedy_step_bytes(lm)
    report = {'model': source, 'utterances': len(utterances) if args.load else args.max_utterances,
              'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
              'dtype': 'bf16' if cfg.bf16 else 'fp32', 'draft_depth': depth,
              'parameters': sum(p.numel() for p in model.parameters()),
              'llm_parameters_bytes': weight_bytes(lm), 'greedy_step_weight_bytes': step_bytes,
              'mtp_layer_weight_bytes': [weight_bytes(layer) for layer in lm.mtp.layers] if depth else [],
              'bandwidth_bound_tokens_per_s_per_row': args.hbm_tb_per_s * 1e12 / step_bytes,
              'batches': {}}
    for size in args.batch_sizes:
        if args.load:
            batches = [make_batch(utterances[i:i + size], tok.pad_id, cfg.num_mel_bins, device)
                       for i in range(0, len(utterances), size)]
        else:
            batches = random_batches(cfg, args.max_utterances, size, device)
        print(f'batch {size}:', file=sys.stderr, flush=True)
        figures = {}
        if args.count_ops:
            figures['step_profile'] = count_ops(model, batches[0], depth, args, vocab)
        if not args.skip_timing:
            figures.update(time_modes(model, batches, depth, args, stops, vocab))
        report['batches'][str(size)] = figures
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text, flush=True)


if __name__ == '__main__':
    main()
