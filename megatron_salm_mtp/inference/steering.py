"""The flags of decoding steered by the CTC head, shared by ``evaluate`` and ``transcribe``: the
joint weight W, the beam size B and a word list with its penalty P (``lexicon.py``),
each set of them one decoding mode, ``ctc_joint_W[_beamB][_lexP]``."""

import os
from dataclasses import dataclass

from .ctc_beam import joint_ctc_beam_decode
from .decode import joint_ctc_decode
from .lexicon import Lexicon, build_lexicon, lexicon_words


@dataclass(frozen=True)
class Steering:
    """One steered decoder: its joint weight, beam size and word list (with its penalty)."""
    weight: float
    beam_size: int = 1
    lexicon: Lexicon | None = None

    @property
    def mode(self) -> str:
        lexicon = f'_lex{self.lexicon.penalty:g}' if self.lexicon is not None else ''
        return f'ctc_joint_{self.weight:g}' + (f'_beam{self.beam_size}' if self.beam_size > 1 else '') + lexicon


def add_steering_arguments(p, several: bool) -> None:
    """The flags; with ``several``, each takes several values (a mode per combination)."""
    nargs, each = ('+', '; a mode per value') if several else (1, '')
    p.add_argument('--ctc-joint-weight', type=float, nargs=nargs, metavar='W',
                   help="decode greedily with each candidate token scored by the CTC head's prefix score as "
                        f'well, with weight W in (0, 1] (joint CTC/attention decoding; a CTC head on characters; '
                        f'eager{each})')
    p.add_argument('--ctc-beam-size', type=int, nargs=nargs, default=[1], metavar='B',
                   help='with --ctc-joint-weight: keep B hypotheses per utterance (joint CTC/attention beam search; '
                        f'1, the default: the steered greedy decoder{each})')
    p.add_argument('--lexicon', metavar='MANIFESTS',
                   help="with --ctc-joint-weight and --lexicon-penalty: a word list, the words of these manifests' "
                        'transcripts (comma-separated JSONL, ASR or conversation lines; e.g. the training set)')
    p.add_argument('--lexicon-penalty', type=float, nargs=nargs, metavar='P',
                   help='with --lexicon: each word a steered hypothesis writes that the list lacks costs P (log-'
                        f'probability units) in its score{each}, beside the decoders without the list)')


def check_steering_args(parser, args) -> None:
    """Every steering flag, before the model is loaded."""
    weights, sizes = args.ctc_joint_weight or [], args.ctc_beam_size
    bad = [w for w in weights if not 0 < w <= 1]
    if bad:
        parser.error(f'--ctc-joint-weight {bad[0]}: must be in (0, 1]')
    bad = [b for b in sizes if b < 1]
    if bad:
        parser.error(f'--ctc-beam-size {bad[0]}: must be >= 1')
    if sizes != [1] and not weights:
        parser.error('--ctc-beam-size steers a beam search by the CTC head: give --ctc-joint-weight too')
    if bool(args.lexicon) != bool(args.lexicon_penalty):
        parser.error('--lexicon and --lexicon-penalty go together: the list and what a word off it costs')
    if args.lexicon and not weights:
        parser.error('--lexicon steers the CTC-steered decoders: give --ctc-joint-weight too')
    bad = [p for p in args.lexicon_penalty or [] if not p > 0]
    if bad:
        parser.error(f'--lexicon-penalty {bad[0]}: must be > 0')
    for path in (args.lexicon or '').split(','):
        if path and not os.path.isfile(path):
            parser.error(f'--lexicon {path}: no such file')


def steerings(parser, args, tokenizer, vocab_size: int, device) -> list[Steering]:
    """The steered decoders the flags ask for: each W and B, without the word list and with it at
    each P. The list is read here (a bad line is one parser error naming it)."""
    if not args.ctc_joint_weight:
        return []
    lexicons = [None]
    if args.lexicon:
        try:
            base = build_lexicon(lexicon_words(args.lexicon), tokenizer, vocab_size, device)
        except (OSError, ValueError) as e:  # a ManifestError is a ValueError naming file:line
            parser.error(f'--lexicon {args.lexicon}: {e}')
        lexicons += [base.with_penalty(p) for p in args.lexicon_penalty]
    return [Steering(w, b, lexicon) for w in args.ctc_joint_weight for b in args.ctc_beam_size for lexicon in lexicons]


def steered_decode(model, batch, max_new_tokens, stops, vocab_size, spelling, steering: Steering, workspaces):
    """Decoding steered by the CTC head: greedy with one hypothesis, beam search with more."""
    if steering.beam_size == 1:
        return joint_ctc_decode(model, batch, max_new_tokens, stops, vocab_size, steering.weight, spelling,
                                workspaces, steering.lexicon)
    return joint_ctc_beam_decode(model, batch, max_new_tokens, stops, vocab_size, steering.weight, spelling,
                                 steering.beam_size, workspaces, steering.lexicon)
