"""Figures of one decoding mode over a manifest, and the acceptance plot."""

from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from .decode import DecodeStats
from .inputs import Utterance
from .wer import ErrorCount


def _rate(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def acceptance_figures(stats: DecodeStats) -> Dict[str, object]:
    """Per-depth acceptance (given that the drafts before it were accepted, and per verify step)
    and tokens emitted per trunk forward after the prefill."""
    figures = {'verify_forwards': stats.verify_steps,
               'tokens_per_trunk_forward': _rate(stats.verify_emitted, stats.verify_steps)}
    if stats.depths:
        figures['acceptance_per_depth'] = [_rate(a, n) for a, n in
                                           zip(stats.draft_accepts, stats.draft_attempts)]
        figures['acceptance_per_depth_of_all_steps'] = [_rate(a, stats.verify_steps)
                                                        for a in stats.draft_accepts]
        figures['draft_attempts'] = list(stats.draft_attempts)
        figures['draft_accepts'] = list(stats.draft_accepts)
    return figures


def mode_report(utterances: Sequence[Utterance], texts: Sequence[str], outputs: Sequence[List[int]],
                stats: Sequence[DecodeStats], seconds: float, depths: int = 0) -> Dict[str, object]:
    """WER (overall and per subset), acceptance, speed of one decoding mode."""
    errors, by_subset = ErrorCount(), defaultdict(ErrorCount)
    total, subset_stats = DecodeStats(depths), defaultdict(lambda: DecodeStats(depths))
    for utt, text, row_stats in zip(utterances, texts, stats):
        errors.add(utt.reference, text)
        by_subset[utt.subset].add(utt.reference, text)
        total.merge(row_stats)
        subset_stats[utt.subset].merge(row_stats)
    tokens = sum(len(o) for o in outputs)
    audio = sum(u.seconds for u in utterances)
    report = {'wer': errors.wer, 'word_errors': errors.errors, 'reference_words': errors.words,
              'generated_tokens': tokens, 'decode_seconds': seconds,
              'decode_tokens_per_s': _rate(tokens, seconds), 'real_time_factor': _rate(seconds, audio),
              **acceptance_figures(total), 'subsets': {}}
    for name in sorted(by_subset):
        report['subsets'][name] = {'wer': by_subset[name].wer, 'utterances':
                                   sum(u.subset == name for u in utterances),
                                   **acceptance_figures(subset_stats[name])}
    return report


def plot_acceptance(report: dict, path: str) -> Optional[str]:
    """PNG of acceptance per depth (overall and per subset); None where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = {k: v for k, v in report['modes'].items() if 'acceptance_per_depth' in v}
    figure, axes = plt.subplots(1, max(1, len(runs)), figsize=(5 * max(1, len(runs)), 3.5), squeeze=False)
    for axis, (name, figures) in zip(axes[0], runs.items()):
        depths = range(1, len(figures['acceptance_per_depth']) + 1)
        series = {'overall': figures['acceptance_per_depth'],
                  **{s: f['acceptance_per_depth'] for s, f in figures['subsets'].items()}}
        for label, values in series.items():
            axis.plot(list(depths), [v if v is not None else float('nan') for v in values],
                      marker='o', label=label)
        axis.set(title=name, xlabel='MTP depth', ylabel='acceptance', ylim=(0, 1.02),
                 xticks=list(depths))
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
