"""Transcribe audio files with a trained SALM, no manifest needed.

    python -m megatron_salm_mtp.transcribe --load ckpt a.wav b.flac c.mp3 \\
        [--speculative | --ctc-joint-weight 0.3 [--ctc-beam-size 4] [--lexicon M --lexicon-penalty P]] \\
        [--json]

Each file (any format soundfile reads, WAV without it; resampled to 16 kHz) is prompted as the
checkpoint's run prompted its training audio (its template, system prompt and default task
prompt, or ``--prompt``) and decoded greedily, or with MTP self-speculative decoding
(``--speculative``: the same text, fewer trunk forwards), or steered by the encoder's CTC head
(``--ctc-joint-weight W``: ``evaluate``'s ``ctc_joint_W``; with ``--ctc-beam-size B`` its beam search,
README; with ``--lexicon``, each word off the list costs ``--lexicon-penalty``). One line per file
on stdout, in the order given: ``FILE<Tab>TRANSCRIPT``, or with ``--json`` a NeMo-style manifest
line (``audio_filepath``, ``duration``, ``pred_text``). A file that cannot be read is named on
stderr and left out; decoding runs as ``evaluate``'s does (TP=1, PP=1, one GPU or the CPU).
"""

import argparse
import json
import os

from .commands import add_load_argument
from .config import ENCODER_CTC
from .data.manifest import Example, Segment
from .evaluate import check_ctc_head, decoding_device, decoding_modes, draft_depth, load_or_error, run_mode
from .inference.ctc_joint import JOINT_UNITS
from .inference.inputs import example_utterances, stop_ids
from .inference.steering import add_steering_arguments, check_steering_args, steerings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.transcribe', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('files', nargs='+', metavar='AUDIO', help='audio files to transcribe')
    add_load_argument(p)
    p.add_argument('--prompt', help="the user's instruction before the audio (default: the run's default prompt)")
    p.add_argument('--speculative', action='store_true', help='decode with MTP drafts (same output, fewer forwards)')
    p.add_argument('--mtp-draft-depth', type=int, help='drafted tokens per trunk forward (default: trained depths)')
    add_steering_arguments(p, several=False)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--max-new-tokens', type=int, default=128)
    p.add_argument('--cuda-graphs', action='store_true', help='replay each decoding step as a CUDA graph (GPU only)')
    p.add_argument('--json', action='store_true', help='one NeMo-style manifest line per file, with pred_text')
    p.set_defaults(audio_ablation=False, ctc_greedy=False)
    return p


def check_args(parser, args) -> None:
    for path in args.files:
        if not os.path.isfile(path):
            parser.error(f'{path}: no such file')
    if not os.path.isdir(args.load):
        parser.error(f'--load {args.load}: no such directory')
    for flag, value in (('--batch-size', args.batch_size), ('--max-new-tokens', args.max_new_tokens)):
        if value < 1:
            parser.error(f'{flag} {value}: must be >= 1')
    if args.mtp_draft_depth is not None and not args.speculative:
        parser.error('--mtp-draft-depth needs --speculative')
    check_steering_args(parser, args)
    if args.ctc_joint_weight and args.speculative:
        parser.error("--ctc-joint-weight and --speculative: choose one decoder (speculative decoding is greedy's)")


def file_examples(paths, prompt):
    """One ASR example per file, as a manifest line ``{"audio_filepath": path, "text": ""}`` reads."""
    examples = []
    for number, path in enumerate(paths, start=1):
        segments = ([Segment('user', 'text', prompt)] if prompt else []) + [
            Segment('user', 'audio', os.path.abspath(path)), Segment('assistant', 'text', '')]
        examples.append(Example(tuple(segments), path, number))
    return examples


def transcribe(args, parser) -> list:
    """(file, duration in seconds, transcript) of each readable file, in the order given."""
    loaded = load_or_error(parser, args.load)
    if loaded.training_mode == ENCODER_CTC:
        parser.error(f'--load {args.load}: a stage-1 checkpoint (--training-mode {ENCODER_CTC}) has an LLM that '
                     'never trained; transcribe with the stage-2 checkpoint trained from it')
    depth = draft_depth(parser, args, loaded.cfg) if args.speculative else None
    if args.ctc_joint_weight:
        check_ctc_head(parser, args, loaded.cfg, '--ctc-joint-weight', JOINT_UNITS)
    # The one steered decoder asked for: with the word list where one is given.
    steered = steerings(parser, args, loaded.tokenizer, loaded.cfg.vocab_size, decoding_device())[-1:]
    prompt = loaded.data.default_prompt if args.prompt is None else args.prompt
    # unreadable files are logged (stderr) and left out
    utterances, _ = example_utterances(file_examples(args.files, prompt), loaded.data, loaded.tokenizer,
                                       'files', 'reading audio')
    if not utterances:
        parser.error('no readable audio among the files given')
    stops = stop_ids(loaded.tokenizer, loaded.data.prompt_template)
    mode = 'speculative' if depth else 'greedy'
    if steered:
        mode = steered[0].mode
    decode, batches, to_text = decoding_modes(args, loaded, depth, utterances, stops, False, steered)[mode]
    outputs, _, _ = run_mode(mode, decode, batches, warmup=0)
    texts = [to_text(o) for o in outputs]
    return [(u.source, u.seconds, text) for u, text in zip(utterances, texts)]


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    for path, seconds, text in transcribe(args, parser):
        if args.json:
            print(json.dumps({'audio_filepath': path, 'duration': round(seconds, 3), 'pred_text': text},
                             ensure_ascii=False), flush=True)
        else:
            print(f'{path}\t{text}', flush=True)


if __name__ == '__main__':
    main()
