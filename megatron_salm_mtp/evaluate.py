"""Transcribe a manifest with a trained SALM: greedy and MTP self-speculative decoding, one report.

    python -m megatron_salm_mtp.evaluate --load ckpt --manifest test.jsonl --speculative \\
        [--mtp-draft-depth 3] [--batch-size 8] [--max-new-tokens 128] [--out report.json]

The checkpoint may come from any TP/PP layout; it is loaded as TP=1, PP=1 on one GPU (or the
CPU). Greedy decoding always runs; with ``--speculative`` the MTP heads also draft up to
``--mtp-draft-depth`` tokens per trunk forward, over the same batches in the same process, so the
speedup compares like with like. The JSON report holds, per mode: WER overall and per manifest
``subset``, decode tokens/s, real-time factor, tokens per trunk forward and (speculative)
acceptance per depth; then the speedup of speculative over greedy and how many utterances differ
between the two (lossless decoding: 0). A PNG of acceptance per depth is written beside the
report when matplotlib imports.
"""

import argparse
import json
import os
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.evaluate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--load', required=True, help='checkpoint folder (its latest complete checkpoint)')
    p.add_argument('--manifest', required=True, help='JSONL manifest (audio_filepath, text, subset)')
    p.add_argument('--speculative', action='store_true', help='also decode with MTP drafts')
    p.add_argument('--mtp-draft-depth', type=int,
                   help='drafted tokens per trunk forward (default: the trained MTP depths)')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--max-new-tokens', type=int, default=128)
    p.add_argument('--max-utterances', type=int, help='decode only the first N lines of the manifest')
    p.add_argument('--warmup-batches', type=int, default=1,
                   help='batches decoded once, untimed, before the timed pass of each mode')
    p.add_argument('--out', help='report path (JSON; default: print it)')
    return p


def check_files(parser, args) -> None:
    if not os.path.isfile(args.manifest):
        parser.error(f'--manifest {args.manifest}: no such file')
    if not os.path.isdir(args.load):
        parser.error(f'--load {args.load}: no such directory')
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error('--batch-size and --max-new-tokens must be >= 1')
    if args.mtp_draft_depth is not None and not args.speculative:
        parser.error('--mtp-draft-depth needs --speculative')


def draft_depth(parser, args, cfg) -> int:
    """The MTP depth to draft with, or a parser error naming the flag and the checkpoint."""
    if not cfg.mtp_depths:
        parser.error(f'--speculative: the checkpoint in --load {args.load} has no MTP heads '
                     '(trained without --mtp-num-layers)')
    depth = cfg.mtp_depths if args.mtp_draft_depth is None else args.mtp_draft_depth
    if depth < 1:
        parser.error(f'--mtp-draft-depth {depth}: must be >= 1')
    if depth > cfg.mtp_depths and not cfg.mtp_use_repeated_layer:
        parser.error(f'--mtp-draft-depth {depth} exceeds the {cfg.mtp_depths} MTP depths trained in '
                     f'--load {args.load}; deeper drafts need a shared head (--mtp-use-repeated-layer)')
    return depth


def _synchronize() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_mode(decode, batches, warmup: int):
    """(outputs, per-row stats, seconds) of ``decode(batch)`` over ``batches``, timed after
    ``warmup`` untimed batches."""
    for batch in batches[:warmup]:
        decode(batch)
    _synchronize()
    start = time.perf_counter()
    outputs, stats = [], []
    for batch in batches:
        rows, row_stats = decode(batch)
        outputs.extend(rows)
        stats.extend(row_stats)
    _synchronize()
    return outputs, stats, time.perf_counter() - start


def evaluate(args, parser) -> dict:
    import torch
    from megatron.core.package_info import __version__ as mcore_version

    from .inference.decode import greedy_decode, speculative_decode
    from .inference.inputs import make_batch, read_utterances, stop_ids
    from .inference.loading import load_for_inference
    from .inference.report import mode_report, plot_acceptance

    loaded = load_for_inference(args.load)
    cfg, tok = loaded.cfg, loaded.tokenizer
    depth = draft_depth(parser, args, cfg) if args.speculative else None
    utterances = read_utterances(args.manifest, loaded.data, tok)[:args.max_utterances]
    device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
    groups = [utterances[i:i + args.batch_size] for i in range(0, len(utterances), args.batch_size)]
    batches = [make_batch(g, tok.pad_id, cfg.num_mel_bins, device) for g in groups]
    stops = stop_ids(tok, loaded.data.prompt_template)
    modes = {'greedy': lambda b: greedy_decode(loaded.model, b, args.max_new_tokens, stops, cfg.vocab_size)}
    if depth:
        modes['speculative'] = lambda b: speculative_decode(loaded.model, b, args.max_new_tokens,
                                                            stops, cfg.vocab_size, depth)
    report = {'checkpoint': os.path.abspath(args.load), 'iteration': loaded.iteration,
              'manifest': os.path.abspath(args.manifest), 'utterances': len(utterances),
              'audio_seconds': sum(u.seconds for u in utterances), 'batch_size': args.batch_size,
              'max_new_tokens': args.max_new_tokens, 'mtp_depths_trained': cfg.mtp_depths,
              'draft_depth': depth, 'megatron_core': mcore_version,
              'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
              'dtype': 'bf16' if cfg.bf16 else 'fp32', 'modes': {}}
    outputs = {}
    for name, decode in modes.items():
        outputs[name], stats, seconds = run_mode(decode, batches, args.warmup_batches)
        texts = [tok.decode([t for t in o if t not in stops]) for o in outputs[name]]
        report['modes'][name] = mode_report(utterances, texts, outputs[name], stats, seconds,
                                            depth if name == 'speculative' else 0)
        for utt, text in zip(utterances, texts):
            report.setdefault('hypotheses', {}).setdefault(utt.where, {'subset': utt.subset,
                                                                     'reference': utt.reference})[name] = text
    if depth:
        report['speculative_vs_greedy'] = compare(report['modes'], outputs, utterances)
    report['hypotheses'] = list(report['hypotheses'].values())
    if args.out:
        report['acceptance_plot'] = plot_acceptance(report, os.path.splitext(args.out)[0] + '_acceptance.png')
    return report


def compare(modes: dict, outputs: dict, utterances) -> dict:
    """Speedup (same batches, same process) and token-for-token agreement with greedy."""
    differing = [u.where for u, g, s in zip(utterances, outputs['greedy'], outputs['speculative']) if g != s]
    return {'speedup': modes['greedy']['decode_seconds'] / modes['speculative']['decode_seconds'],
            'mismatched_utterances': len(differing), 'identical_to_greedy': not differing,
            'mismatched': differing[:20]}


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_files(parser, args)
    report = evaluate(args, parser)
    text = json.dumps(report, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text + '\n')
        summary = {name: {k: figures.get(k) for k in ('wer', 'decode_tokens_per_s', 'tokens_per_trunk_forward',
                                                     'acceptance_per_depth')}
                   for name, figures in report['modes'].items()}
        print(json.dumps({'report': args.out, **summary, **({'speculative_vs_greedy': report[
            'speculative_vs_greedy']} if 'speculative_vs_greedy' in report else {})}), flush=True)
    else:
        print(text, flush=True)


if __name__ == '__main__':
    main()
