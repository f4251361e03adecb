"""Two recognisers on the same utterances: ``python -m megatron_salm_mtp.tools.compare_evals A.json B.json``.

Reads two ``evaluate`` reports, pairs their transcripts by utterance (the report's ``where``:
manifest and line), and prints per split, per subset and per group (where the reports were made
with ``evaluate --group-by``, e.g. the synthetic corpus's accents) the normalised WER of each and
the difference B - A with a 95 % paired bootstrap interval (utterances resampled with replacement,
both models' errors on each drawn utterance kept together). Two hundred utterances of a split give
WER intervals several points wide; the paired interval of a difference is narrower, and says
whether a change of recipe moved the figure or the sample did. Two decoders of one model compare the
same way: the report twice, ``--mode greedy --mode-b ctc_joint_0.3``.
"""

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..inference.wer import MISSING_PACKAGES, ErrorCount, normalised_words, scoring_available
from .eval_reports import format_table, read_report

COLUMNS = ['split / subset', 'utterances', 'WER A', 'WER B', 'B - A', '95 % interval']


@dataclass(frozen=True)
class PairedUtterance:
    split: str
    subset: str
    reference_words: int
    errors_a: int
    errors_b: int
    group: str = ''  # the value of evaluate --group-by's field; '' without it


def _word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    count = ErrorCount()
    count.add(normalised_words(reference), normalised_words(hypothesis))
    return count.errors, count.reference


def paired_utterances(report_a: dict, report_b: dict, mode: str, mode_b: str | None = None) -> list[PairedUtterance]:
    """The utterances A decoded in ``mode`` and B in ``mode_b`` (default: ``mode``), in A's order; a
    ValueError names the first utterance whose reference differs (not the same test set) or a mode a
    report lacks."""
    mode_b = mode_b or mode
    for name, report, wanted in (('A', report_a, mode), ('B', report_b, mode_b)):
        if wanted not in report['modes']:
            raise ValueError(f"report {name} has no mode {wanted!r} (it has {', '.join(report['modes'])})")
    theirs = {h['where']: h for h in report_b['hypotheses']}
    pairs = []
    for mine in report_a['hypotheses']:
        other = theirs.get(mine['where'])
        if other is None:
            continue
        if other['reference'] != mine['reference']:
            raise ValueError(f"{mine['where']}: the reports' references differ ({mine['reference']!r} vs "
                             f"{other['reference']!r}): they were not evaluated on the same utterances")
        errors_a, words = _word_errors(mine['reference'], mine[mode])
        errors_b, _ = _word_errors(other['reference'], other[mode_b])
        pairs.append(PairedUtterance(mine['split'], mine.get('subset', ''), words, errors_a, errors_b,
                                     mine.get('group', '')))
    if not pairs:
        raise ValueError('the reports share no utterance (their hypotheses\' "where" never match)')
    return pairs


def word_error_rates(pairs: Sequence[PairedUtterance]) -> tuple[float, float]:
    """Pooled normalised WER of A and of B over ``pairs``."""
    words = max(sum(p.reference_words for p in pairs), 1)
    return sum(p.errors_a for p in pairs) / words, sum(p.errors_b for p in pairs) / words


def bootstrap_difference(pairs: Sequence[PairedUtterance], draws: int, seed: int) -> tuple[float, float]:
    """95 % interval of WER(B) - WER(A) over ``draws`` resamples of the utterances."""
    rng = random.Random(seed)
    differences = []
    for _ in range(draws):
        sample = rng.choices(pairs, k=len(pairs))
        rate_a, rate_b = word_error_rates(sample)
        differences.append(rate_b - rate_a)
    differences.sort()
    return differences[int(0.025 * (draws - 1))], differences[int(0.975 * (draws - 1))]


def comparison_rows(pairs: Sequence[PairedUtterance], draws: int, seed: int) -> list[list[str]]:
    """One row per split, per subset within it and per group within it: utterances, WER A, WER B,
    B - A, interval."""
    rows = []
    for split in dict.fromkeys(p.split for p in pairs):
        in_split = [p for p in pairs if p.split == split]
        groups = [(split, in_split)] + [(f'  {subset}', [p for p in in_split if p.subset == subset])
                                        for subset in sorted({p.subset for p in in_split})]
        groups += [(f'  group {group}', [p for p in in_split if p.group == group])
                   for group in sorted({p.group for p in in_split} - {''})]
        for label, group in groups:
            rate_a, rate_b = word_error_rates(group)
            low, high = bootstrap_difference(group, draws, seed)
            rows.append([label, str(len(group)), f'{rate_a:.3f}', f'{rate_b:.3f}', f'{rate_b - rate_a:+.3f}',
                         f'[{low:+.3f}, {high:+.3f}]'])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('report_a', help='evaluate report (JSON) of model A')
    parser.add_argument('report_b', help='evaluate report (JSON) of model B, on the same utterances')
    parser.add_argument('--mode', default='greedy', help='decoding mode of both reports to compare')
    parser.add_argument('--mode-b', help="report B's mode, where it differs (two decoders of one model: the same "
                                         'report twice)')
    parser.add_argument('--draws', type=int, default=2000, help='bootstrap resamples')
    parser.add_argument('--seed', type=int, default=0, help='seed of the resampling')
    args = parser.parse_args(argv)
    if not scoring_available():
        sys.exit(MISSING_PACKAGES)
    if args.draws < 1:
        sys.exit(f'--draws must be >= 1, got {args.draws}')
    try:
        pairs = paired_utterances(read_report(args.report_a), read_report(args.report_b), args.mode, args.mode_b)
    except ValueError as error:
        sys.exit(str(error))
    print(format_table(COLUMNS, comparison_rows(pairs, args.draws, args.seed)))


if __name__ == '__main__':
    main()
