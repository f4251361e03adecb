"""Word errors by how often training wrote the word: ``python -m megatron_salm_mtp.tools.word_frequency_errors
REPORT.json --train-manifest corpus/train.jsonl``.

Splits a recogniser's errors into the ones a language model could not have prevented and the ones
the audio should have: each reference word of an ``evaluate`` report, after the normaliser, falls
into a band by its count in the training transcripts (never, 1-5, 6-50, more: the edges are
``--bands``), and the table gives per split, subset and band the reference words, the share of them
that is wrong (substituted or deleted in the normalised alignment) and the band's share of the wrong
words. A recogniser that misses common words on new voices mishears; one that misses only words
training never wrote misspells what it heard. Insertions belong to no reference word and are left out.
"""

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.manifest import ManifestError, read_manifests
from ..inference.wer import MISSING_PACKAGES, Levenshtein, normalised_words, scoring_available
from .eval_reports import format_table, read_report

DEFAULT_BANDS = (0, 5, 50)
COLUMNS = ['split / subset', 'in training', 'words', 'of words', 'wrong', 'of wrong words']


@dataclass
class BandCount:
    words: int = 0
    wrong: int = 0


def training_word_counts(paths: str | list[str]) -> Counter:
    """How often each normalised word occurs in the transcripts of the manifests ``paths`` (ASR or
    conversation lines; a comma-separated string or a list)."""
    counts = Counter()
    for example in read_manifests(paths, default_prompt=None):
        counts.update(normalised_words(example.answer_text))
    return counts


def wrong_positions(reference: Sequence[str], hypothesis: Sequence[str]) -> set[int]:
    """Indices of the reference words that the alignment substitutes or deletes."""
    return {op.src_pos for op in Levenshtein.editops(reference, hypothesis) if op.tag in ('replace', 'delete')}


def band_names(edges: Sequence[int]) -> list[str]:
    """Labels of the bands cut at ``edges`` (counts up to and including each edge): 0, 5, 50 ->
    'never', '1-5', '6-50', '>50'."""
    names, low = [], 0
    for edge in edges:
        names.append('never' if edge == 0 else f'{low}-{edge}' if low < edge else str(edge))
        low = edge + 1
    return names + [f'>{edges[-1]}']


def band_of(count: int, edges: Sequence[int]) -> int:
    return next((i for i, edge in enumerate(edges) if count <= edge), len(edges))


def band_counts(report: dict, counts: Counter, mode: str,
                edges: Sequence[int]) -> dict[tuple[str, str], list[BandCount]]:
    """{(split, subset): [BandCount per band]} of the report's transcripts in ``mode``; subset ''
    is the whole split."""
    if mode not in report['modes']:
        raise ValueError(f"the report has no mode {mode!r} (it has {', '.join(report['modes'])})")
    table: dict[tuple[str, str], list[BandCount]] = {}
    for utterance in report['hypotheses']:
        reference = normalised_words(utterance['reference'])
        wrong = wrong_positions(reference, normalised_words(utterance[mode]))
        banded = [(band_of(counts[word], edges), i in wrong) for i, word in enumerate(reference)]
        split = utterance['split']
        for key in dict.fromkeys([(split, ''), (split, utterance.get('subset', ''))]):
            bands = table.setdefault(key, [BandCount() for _ in range(len(edges) + 1)])
            for band, is_wrong in banded:
                bands[band].words += 1
                bands[band].wrong += is_wrong
    return table


def table_rows(table: dict[tuple[str, str], list[BandCount]], edges: Sequence[int]) -> list[list[str]]:
    """One row per split (then its subsets) and band: words, their share, wrong rate, share of wrong."""
    rows = []
    for (split, subset), bands in sorted(table.items()):
        words, wrong = sum(b.words for b in bands), sum(b.wrong for b in bands)
        label = f'  {subset}' if subset else split
        for name, band in zip(band_names(edges), bands):
            rows.append([label, name, str(band.words), f'{band.words / max(words, 1):.0%}',
                         f'{band.wrong / max(band.words, 1):.3f}', f'{band.wrong / max(wrong, 1):.0%}'])
            label = ''
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('report', help='evaluate report (JSON)')
    parser.add_argument('--train-manifest', required=True,
                        help='the training manifest(s), comma-separated (ASR or conversation lines)')
    parser.add_argument('--mode', default='greedy', help="the report's decoding mode to score")
    parser.add_argument('--bands', type=int, nargs='+', default=list(DEFAULT_BANDS),
                        help='upper edges of the count bands, increasing from 0')
    args = parser.parse_args(argv)
    if not scoring_available():
        sys.exit(MISSING_PACKAGES)
    if args.bands[0] < 0 or any(b <= a for a, b in zip(args.bands, args.bands[1:])):
        sys.exit(f'--bands must be increasing counts >= 0, got {args.bands}')
    try:
        report = read_report(args.report)
        counts = training_word_counts(args.train_manifest)
        table = band_counts(report, counts, args.mode, args.bands)
    except FileNotFoundError as error:
        sys.exit(f'--train-manifest: {error.filename}: no such file')
    except (ValueError, ManifestError, OSError) as error:
        sys.exit(str(error))
    print(format_table(COLUMNS, table_rows(table, args.bands)))


if __name__ == '__main__':
    main()
