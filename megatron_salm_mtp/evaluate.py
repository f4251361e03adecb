"""Transcribe manifests with a trained SALM: greedy and MTP self-speculative decoding, one report.

    python -m megatron_salm_mtp.evaluate --load ckpt --manifest test.jsonl,test_unseen.jsonl \\
        [--speculative [--mtp-draft-depth 3]] [--audio-ablation] [--ctc-greedy] \\
        [--ctc-joint-weight 0.3 [0.5 ...] [--ctc-beam-size 1 4 ...] [--lexicon M --lexicon-penalty P ...]] \\
        [--batch-size 8] [--max-new-tokens 128] [--out report.json] [--out-manifest predictions.jsonl]

The checkpoint may come from any TP/PP layout; it is loaded as TP=1, PP=1 on one GPU (or the CPU).
Each manifest is a split named by its file stem. Greedy decoding always runs; with ``--speculative``
the MTP heads also draft up to ``--mtp-draft-depth`` tokens per trunk forward, over the same batches
in the same process, so the speedup compares like with like; with ``--audio-ablation`` greedy
decoding runs again with each audio replaced by silence of the same length (same prompt), and the
report sets WER with and without audio side by side: a model that ignores its audio scores the same
either way; with ``--ctc-greedy`` the encoder's CTC head transcribes the same batches alone
(``ctc_greedy``: what the encoder heard, without the LLM); with ``--ctc-joint-weight W`` greedy decoding
is steered by the CTC head with weight W (``ctc_joint_W``, ``inference/ctc_joint.py``), and with
``--ctc-beam-size B`` > 1 so is a beam search of B hypotheses (``ctc_joint_W_beamB``,
``inference/ctc_beam.py``), and with ``--lexicon M --lexicon-penalty P`` each of them again with
every word that the transcripts of M lack costing P (``_lexP``, ``inference/lexicon.py``). A
checkpoint of stage 1 (``--training-mode encoder_ctc``, whose LLM never trained) is scored by its
CTC head alone. The JSON
report holds, per mode: WER after a Whisper-style English normaliser (``wer``) and raw (``wer_raw``:
lowercase, no punctuation), CER, substitutions/deletions/insertions, overall, per ``subset``, per
split and per subset within each split; decode tokens/s, real-time factor, tokens per trunk forward
and (speculative) acceptance per depth; then the speedup of speculative over greedy and how many
utterances differ between the two (lossless decoding: 0). Lines whose audio is missing or unreadable
are skipped and counted. A PNG of acceptance per depth is written beside the report when matplotlib
imports. Progress goes to stderr.
"""

import argparse
import json
import os
import time
from collections import Counter

import torch
from megatron.core.package_info import __version__ as mcore_version

from .commands import add_load_argument
from .config import ENCODER_CTC, ConfigError
from .data.progress import Progress
from .inference.ctc_greedy import SPELLED_UNITS, audio_separator, ctc_greedy_decode, ctc_text
from .inference.ctc_joint import JOINT_UNITS, token_spelling
from .inference.decode import greedy_decode, speculative_decode
from .inference.inputs import make_batch, read_utterances, split_name, stop_ids
from .inference.loading import LoadedModel, load_for_inference
from .inference.report import ablation_table, group_of, mode_report, plot_acceptance, write_prediction_manifest
from .inference.steering import add_steering_arguments, check_steering_args, steered_decode, steerings
from .inference.wer import MISSING_PACKAGES, scoring_available
from .inference.workspace import WorkspacePool

REPORT_FILE = 'report.json'  # what --out FOLDER holds
SILENCE = 'greedy_silence'  # the ablation's mode: greedy decoding with the audio silenced
CTC_GREEDY = 'ctc_greedy'  # the CTC head's best path, without the LLM
SKIPS_LISTED = 100


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.evaluate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_argument(p)
    p.add_argument('--manifest', required=True,
                   help='JSONL manifest(s), comma-separated (audio_filepath, text, subset); each is a split '
                        'named by its file stem (test.jsonl -> test)')
    p.add_argument('--speculative', action='store_true', help='also decode with MTP drafts')
    p.add_argument('--mtp-draft-depth', type=int,
                   help='drafted tokens per trunk forward (default: the trained MTP depths)')
    p.add_argument('--audio-ablation', action='store_true',
                   help='also decode greedily with each audio replaced by silence of the same length')
    p.add_argument('--ctc-greedy', action='store_true',
                   help="also transcribe with the audio encoder's CTC head alone (best path, no LLM): "
                        "beside the SALM's WER it shows which errors were not heard (checkpoints trained "
                        'with --ctc-loss-weight on characters or tokens)')
    add_steering_arguments(p, several=True)
    p.add_argument('--cuda-graphs', action='store_true',
                   help='replay each decoding step as a CUDA graph (GPU only): no host overhead per step')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--max-new-tokens', type=int, default=128)
    p.add_argument('--max-utterances', type=int, help='decode only the first N lines of each manifest')
    p.add_argument('--group-by', metavar='FIELD',
                   help="also report the figures per value of this manifest field (e.g. the synthetic corpus's "
                        'accent, or a speaker field), overall and per split')
    p.add_argument('--warmup-batches', type=int, default=1,
                   help='batches decoded once, untimed, before the timed pass of each mode')
    p.add_argument('--out', help=f'report path (JSON); a folder (existing, or given with a trailing /) gets '
                                 f'{REPORT_FILE} inside it; default: print the report')
    p.add_argument('--out-manifest', help='write the decoded manifest lines, each with its greedy transcript '
                                          'as pred_text (JSONL, NeMo style)')
    return p


def manifest_paths(parser, value: str) -> list:
    """The comma-separated manifests, each an existing file with a split name of its own."""
    paths = [p for p in value.split(',') if p]
    if not paths:
        parser.error(f'--manifest {value!r}: no path')
    seen = {}
    for path in paths:
        if not os.path.isfile(path):
            parser.error(f'--manifest {path}: no such file')
        other = seen.setdefault(split_name(path), path)
        if other != path:
            parser.error(f'--manifest: {other} and {path} would both be split {split_name(path)!r}; rename one')
    return paths


def check_writable(parser, flag: str, path: str) -> None:
    """Before any decoding, so that a finished evaluation is never lost to a bad output path."""
    if os.path.isdir(path):
        parser.error(f'{flag} {path}: is a folder')
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        parser.error(f'{flag} {path}: cannot create its folder ({e.strerror})')
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        parser.error(f'{flag} {path}: not writable')


def report_path(parser, out: str) -> str:
    """--out as a file: a folder (existing, or written with a trailing slash) gets report.json."""
    if out.endswith(('/', os.sep)) or os.path.isdir(out):
        out = os.path.join(out, REPORT_FILE)
    check_writable(parser, '--out', out)
    return out


def check_args(parser, args) -> None:
    """Every flag and path checked before the model is loaded; sets ``args.manifests``."""
    if not scoring_available():
        parser.error(MISSING_PACKAGES)
    args.manifests = manifest_paths(parser, args.manifest)
    if not os.path.isdir(args.load):
        parser.error(f'--load {args.load}: no such directory')
    for flag, value, least in (('--batch-size', args.batch_size, 1), ('--max-new-tokens', args.max_new_tokens, 1),
                               ('--max-utterances', args.max_utterances, 1),
                               ('--warmup-batches', args.warmup_batches, 0)):
        if value is not None and value < least:
            parser.error(f'{flag} {value}: must be >= {least}')
    check_steering_args(parser, args)
    if args.mtp_draft_depth is not None and not args.speculative:
        parser.error('--mtp-draft-depth needs --speculative')
    if args.cuda_graphs and not torch.cuda.is_available():
        parser.error('--cuda-graphs needs a GPU')
    if args.out:
        args.out = report_path(parser, args.out)
    if args.out_manifest:
        check_writable(parser, '--out-manifest', args.out_manifest)
        if args.out and os.path.abspath(args.out_manifest) == os.path.abspath(args.out):
            parser.error(f'--out-manifest {args.out_manifest}: the same file as --out')


def load_or_error(parser, load_dir: str) -> LoadedModel:
    """The checkpoint for decoding, or one parser error line where its settings contradict each other."""
    try:
        return load_for_inference(load_dir)
    except ConfigError as err:
        parser.error(str(err))


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


def check_stage_one(parser, args, loaded: LoadedModel) -> bool:
    """True for a stage-1 checkpoint: only its CTC head is scored, so flags that decode with the
    LLM are a parser error naming the checkpoint."""
    if loaded.training_mode != ENCODER_CTC:
        return False
    for flag, given in (('--speculative', args.speculative), ('--audio-ablation', args.audio_ablation),
                        ('--ctc-joint-weight', args.ctc_joint_weight), ('--out-manifest', args.out_manifest)):
        if given:
            parser.error(f'{flag}: --load {args.load} is a stage-1 checkpoint (--training-mode {ENCODER_CTC}: '
                         'its LLM never trained), scored by its CTC head alone; drop the flag')
    if loaded.cfg.ctc_target_units not in SPELLED_UNITS:
        parser.error(f'--load {args.load}: a stage-1 checkpoint is scored by its CTC head alone, which emits '
                     f'{loaded.cfg.ctc_target_units}: no spelling to score (score its stage 2)')
    return True


def check_ctc_head(parser, args, cfg, flag: str, units) -> None:
    """``flag`` needs a CTC head emitting one of ``units``: a parser error naming the checkpoint."""
    if not cfg.ctc_enabled:
        parser.error(f'{flag}: the checkpoint in --load {args.load} has no CTC head '
                     '(trained without --ctc-loss-weight)')
    if cfg.ctc_target_units not in units:
        parser.error(f'{flag}: the CTC head in --load {args.load} emits {cfg.ctc_target_units}, '
                     f'which it cannot use (it needs {" or ".join(units)})')


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_mode(name: str, decode, batches, warmup: int):
    """(outputs, per-row stats, seconds) of ``decode(batch)`` over ``batches``, timed after
    ``warmup`` untimed batches; progress on stderr."""
    for batch in batches[:warmup]:
        decode(batch)
    _synchronize()
    progress = Progress(name, sum(int(b.lengths.numel()) for b in batches))
    start = time.perf_counter()
    outputs, stats = [], []
    for batch in batches:
        rows, row_stats = decode(batch)
        outputs.extend(rows)
        stats.extend(row_stats)
        progress.advance(len(rows))
    _synchronize()
    return outputs, stats, time.perf_counter() - start


def _batches(utterances, size: int, pad_id: int, n_mels: int, device) -> list:
    return [make_batch(utterances[i:i + size], pad_id, n_mels, device) for i in range(0, len(utterances), size)]


def _inputs_report(args, splits: dict) -> dict:
    """What was read: per split its manifest, utterances and skipped lines."""
    skips = [s for _, split_skips in splits.values() for s in split_skips]
    by_reason = dict(Counter(s.reason for s in skips))
    return {'manifest': ','.join(os.path.abspath(m) for m in args.manifests),
            'splits': {name: {'manifest': os.path.abspath(manifest), 'utterances': len(splits[name][0]),
                              'skipped_utterances': len(splits[name][1])}
                       for name, manifest in zip(splits, args.manifests)},
            'utterances': sum(len(u) for u, _ in splits.values()),
            'skipped_utterances': len(skips), 'skipped_by_reason': by_reason,
            'skipped': [f'{s.where}: {s.reason}' for s in skips[:SKIPS_LISTED]]}


def read_splits(parser, args, loaded) -> dict:
    """split name -> (utterances, skipped lines); a manifest that cannot be used is a parser error."""
    try:
        return {split_name(m): read_utterances(m, loaded.data, loaded.tokenizer, args.max_utterances)
                for m in args.manifests}
    except ValueError as e:  # a malformed line (ManifestError) or no usable utterance
        parser.error(str(e))


def decoding_device():
    return torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'


def decoding_modes(args, loaded, depth, utterances, stops, stage_one: bool, steered=()) -> dict:
    """mode -> (decode function, batches, output -> text): greedy; with --speculative the MTP drafts
    over the same batches; with --audio-ablation greedy again over the utterances with their audio
    silenced; with --ctc-greedy the CTC head's best path over the same batches; per ``steered``
    (``inference/steering.py``) decoding steered by the CTC head (eager). A stage-1
    checkpoint (``stage_one``) has the CTC head's mode alone.

    With drafts, greedy runs at the verify width (D+1 positions per step): every token then comes
    out of the same kernels at the same shapes in both modes, so speculative output equals greedy
    output in bf16 too (``inference/decode.py``)."""
    cfg, pad_id = loaded.cfg, loaded.tokenizer.pad_id
    device = decoding_device()
    batches = _batches(utterances, args.batch_size, pad_id, cfg.num_mel_bins, device)
    workspaces = WorkspacePool(cuda_graphs=args.cuda_graphs)
    width = depth + 1 if depth else 1

    def greedy(batch):
        return greedy_decode(loaded.model, batch, args.max_new_tokens, stops, cfg.vocab_size, width=width,
                             workspaces=workspaces)

    def speculative(batch):
        return speculative_decode(loaded.model, batch, args.max_new_tokens, stops, cfg.vocab_size, depth,
                                  workspaces=workspaces)

    def tokens_text(output):
        return loaded.tokenizer.decode([t for t in output if t not in stops])

    modes = {} if stage_one else {'greedy': (greedy, batches, tokens_text)}
    if depth:
        modes['speculative'] = (speculative, batches, tokens_text)
    if args.audio_ablation:
        silent = [u.silenced() for u in utterances]
        modes[SILENCE] = (greedy, _batches(silent, args.batch_size, pad_id, cfg.num_mel_bins, device), tokens_text)
    if args.ctc_greedy or stage_one:
        units, separator = cfg.ctc_target_units, audio_separator(cfg.ctc_target_units)
        modes[CTC_GREEDY] = (lambda batch: ctc_greedy_decode(loaded.model, batch, separator), batches,
                             lambda output: ctc_text(output, units, loaded.tokenizer))
    if steered:
        spelling, eager = token_spelling(loaded.tokenizer, cfg.vocab_size, device), WorkspacePool()
        for steering in steered:
            modes[steering.mode] = (
                lambda batch, steering=steering: steered_decode(
                    loaded.model, batch, args.max_new_tokens, stops, cfg.vocab_size, spelling, steering, eager),
                batches, tokens_text)
    return modes


def lexicon_report(args, steered) -> dict | None:
    listed = next((s.lexicon for s in steered if s.lexicon is not None), None)
    return {'manifests': args.lexicon, 'words': len(listed.words)} if listed is not None else None


def evaluate(args, parser) -> dict:
    loaded = load_or_error(parser, args.load)
    cfg, tok = loaded.cfg, loaded.tokenizer
    stage_one = check_stage_one(parser, args, loaded)
    depth = draft_depth(parser, args, cfg) if args.speculative else None
    if args.ctc_greedy:
        check_ctc_head(parser, args, cfg, '--ctc-greedy', SPELLED_UNITS)
    if args.ctc_joint_weight:
        check_ctc_head(parser, args, cfg, '--ctc-joint-weight', JOINT_UNITS)
    steered = steerings(parser, args, tok, cfg.vocab_size, decoding_device())
    splits = read_splits(parser, args, loaded)
    utterances = [u for split_utterances, _ in splits.values() for u in split_utterances]
    stops = stop_ids(tok, loaded.data.prompt_template)
    modes = decoding_modes(args, loaded, depth, utterances, stops, stage_one, steered)
    report = {'checkpoint': os.path.abspath(args.load), 'iteration': loaded.iteration,
              'training_mode': loaded.training_mode, **_inputs_report(args, splits),
              'audio_seconds': sum(u.seconds for u in utterances), 'batch_size': args.batch_size,
              'max_new_tokens': args.max_new_tokens, 'mtp_depths_trained': cfg.mtp_depths,
              'draft_depth': depth, 'greedy_width': depth + 1 if depth else 1, 'cuda_graphs': args.cuda_graphs,
              'lexicon': lexicon_report(args, steered),
              'megatron_core': mcore_version,
              'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
              'dtype': 'bf16' if cfg.bf16 else 'fp32', 'modes': {}}
    outputs, texts = {}, {}
    for name, (decode, mode_batches, to_text) in modes.items():
        outputs[name], stats, seconds = run_mode(name, decode, mode_batches, args.warmup_batches)
        texts[name] = [to_text(o) for o in outputs[name]]
        report['modes'][name] = mode_report(utterances, texts[name], outputs[name], stats, seconds,
                                            depth if name == 'speculative' else 0, args.group_by,
                                            stepwise=name != CTC_GREEDY)
    if depth:
        report['speculative_vs_greedy'] = compare(report['modes'], outputs, utterances)
    if args.audio_ablation:
        unchanged = sum(a == b for a, b in zip(outputs['greedy'], outputs[SILENCE]))
        report['audio_ablation'] = ablation_table(report['modes']['greedy'], report['modes'][SILENCE], unchanged)
    report['hypotheses'] = [{'where': u.where, 'split': u.split, 'subset': u.subset, 'reference': u.reference,
                             **({'group': group_of(u, args.group_by)} if args.group_by else {}),
                             **{name: texts[name][i] for name in modes}} for i, u in enumerate(utterances)]
    if args.out_manifest:
        write_prediction_manifest(args.out_manifest, utterances, texts['greedy'])
        report['out_manifest'] = os.path.abspath(args.out_manifest)
    if args.out:
        report['acceptance_plot'] = plot_acceptance(report, os.path.splitext(args.out)[0] + '_acceptance.png')
    return report


def compare(modes: dict, outputs: dict, utterances) -> dict:
    """Speedup (same batches, same process) and token-for-token agreement with greedy."""
    differing = [u.where for u, g, s in zip(utterances, outputs['greedy'], outputs['speculative']) if g != s]
    return {'speedup': modes['greedy']['decode_seconds'] / modes['speculative']['decode_seconds'],
            'mismatched_utterances': len(differing), 'identical_to_greedy': not differing,
            'mismatched': differing[:20]}


def summary(report: dict, out: str) -> dict:
    """The headline figures printed when the report goes to a file."""
    keys = ('wer', 'wer_raw', 'cer', 'decode_tokens_per_s', 'step_tokens_per_s', 'tokens_per_trunk_forward',
            'acceptance_per_depth')
    lines = {'report': out, 'utterances': report['utterances'], 'skipped_utterances': report['skipped_utterances'],
             **{name: {k: figures.get(k) for k in keys} for name, figures in report['modes'].items()}}
    for key in ('speculative_vs_greedy', 'audio_ablation'):
        if key in report:
            lines[key] = {k: v for k, v in report[key].items() if k not in ('subsets', 'splits', 'mismatched')}
    return lines


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    report = evaluate(args, parser)
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
        print(json.dumps(summary(report, args.out)), flush=True)
    else:
        print(text, flush=True)


if __name__ == '__main__':
    main()
