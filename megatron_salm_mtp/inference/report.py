"""Figures of one decoding mode (overall, per split, per subset, per ``--group-by`` value), the
audio ablation table, the hypotheses as a NeMo-style manifest, and the acceptance plot."""

import json
from collections import defaultdict
from collections.abc import Sequence

from .decode import DecodeStats
from .inputs import Utterance
from .wer import Scores


def _rate(numerator: float, denominator: float | None) -> float | None:
    return numerator / denominator if denominator else None


def acceptance_figures(stats: DecodeStats) -> dict[str, object]:
    """Per-depth acceptance (given that the drafts before it were accepted, and per verify step;
    drafts for positions after a row's stop id or budget are not counted: ``rows.py``) and tokens
    emitted per trunk forward after the prefill."""
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


class _Group:
    """Scores and decode counts of a set of utterances (all, a split, a subset)."""

    def __init__(self, depths: int):
        self.utterances, self.scores, self.stats = 0, Scores(), DecodeStats(depths)

    def add(self, scores: Scores, stats: DecodeStats) -> None:
        self.utterances += 1
        self.scores.merge(scores)
        self.stats.merge(stats)

    def figures(self) -> dict[str, object]:
        return {'utterances': self.utterances, **self.scores.figures(), **acceptance_figures(self.stats)}


def group_of(utterance: Utterance, field: str) -> str:
    """The value of manifest ``field`` that ``--group-by`` files ``utterance`` under."""
    return str(utterance.fields.get(field, 'none'))


def mode_report(utterances: Sequence[Utterance], texts: Sequence[str], outputs: Sequence[list[int]],
                stats: Sequence[DecodeStats], seconds: float, depths: int = 0,
                group_by: str | None = None, stepwise: bool = True) -> dict[str, object]:
    """WER (normalised and raw), CER, S/D/I, acceptance and speed of one decoding mode: overall,
    per subset (over all splits), per split and per subset within each split; with ``group_by`` (a
    manifest field such as ``accent``) also per value of it, overall and within each split. A mode
    that is not ``stepwise`` (the CTC head's one pass) has no steps after a first token: its step
    figures are None."""
    total = _Group(depths)
    subsets, splits = defaultdict(lambda: _Group(depths)), defaultdict(lambda: _Group(depths))
    split_subsets = defaultdict(lambda: defaultdict(lambda: _Group(depths)))
    groups, split_groups = defaultdict(lambda: _Group(depths)), defaultdict(lambda: defaultdict(lambda: _Group(depths)))
    for utt, text, row_stats in zip(utterances, texts, stats):
        scores = Scores()
        scores.add(utt.reference, text)
        for group in (total, subsets[utt.subset], splits[utt.split], split_subsets[utt.split][utt.subset]):
            group.add(scores, row_stats)
        if group_by:
            value = group_of(utt, group_by)
            for group in (groups[value], split_groups[utt.split][value]):
                group.add(scores, row_stats)
    tokens = sum(len(o) for o in outputs)
    audio = sum(u.seconds for u in utterances)
    encode = sum(s.encode_seconds for s in stats)
    prefill = sum(s.prefill_seconds for s in stats)
    # The token-by-token part, after each batch's first token.
    steps = seconds - encode - prefill if stepwise else None
    report = {**total.figures(), 'generated_tokens': tokens, 'decode_seconds': seconds,
              'decode_tokens_per_s': _rate(tokens, seconds), 'real_time_factor': _rate(seconds, audio),
              'encode_seconds': encode, 'prefill_seconds': prefill, 'step_seconds': steps,
              'step_tokens_per_s': _rate(tokens - len(outputs), steps),
              'subsets': _by_name(subsets),
              'splits': {split: {**group.figures(), 'subsets': _by_name(split_subsets[split])}
                         for split, group in splits.items()}}
    if group_by:
        report['groups'] = _by_name(groups)
        for split, figures in report['splits'].items():
            figures['groups'] = _by_name(split_groups[split])
    return report


def _by_name(groups: dict) -> dict[str, object]:
    return {name: groups[name].figures() for name in sorted(groups)}


def _side_by_side(audio: dict, silence: dict) -> dict[str, object]:
    return {'utterances': audio['utterances'], 'wer': audio['wer'], 'wer_silence': silence['wer'],
            'cer': audio['cer'], 'cer_silence': silence['cer']}


def ablation_table(audio: dict, silence: dict, unchanged: int) -> dict[str, object]:
    """Normalised WER and CER of greedy decoding with the audio and with silence in its place:
    overall, per subset, per split and per subset within each split; ``unchanged_outputs``:
    utterances transcribed the same either way (all of them: the model ignores its audio)."""
    table = {**_side_by_side(audio, silence), 'unchanged_outputs': unchanged}
    return {**table, **_parts_side_by_side(audio, silence),
            'splits': {split: {**_side_by_side(f, silence['splits'][split]),
                               **_parts_side_by_side(f, silence['splits'][split])}
                       for split, f in audio['splits'].items()}}


def _parts_side_by_side(audio: dict, silence: dict) -> dict[str, object]:
    """The subsets' (and ``--group-by`` groups') rows of the ablation table."""
    return {part: {name: _side_by_side(f, silence[part][name]) for name, f in audio[part].items()}
            for part in ('subsets', 'groups') if part in audio}


def write_prediction_manifest(path: str, utterances: Sequence[Utterance], texts: Sequence[str]) -> None:
    """Each utterance's manifest line as it was, plus ``pred_text`` (NeMo's name), in input order."""
    lines = {}
    for source in dict.fromkeys(u.source for u in utterances):
        with open(source, encoding='utf-8') as f:
            lines[source] = list(f)  # line numbers as the manifest reader counts them
    with open(path, 'w', encoding='utf-8') as out:
        for utt, text in zip(utterances, texts):
            row = json.loads(lines[utt.source][utt.line - 1])
            row['pred_text'] = text
            out.write(json.dumps(row, ensure_ascii=False) + '\n')


def plot_acceptance(report: dict, path: str) -> str | None:
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
