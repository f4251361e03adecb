"""compare_evals pairs two evaluate reports by utterance: per-split, per-subset and per-group WER
counted by hand here, a zero difference for identical transcripts, and one-line errors for reports that are
not on the same utterances."""

import json

import pytest

from megatron_salm_mtp.tools.compare_evals import (
    bootstrap_difference,
    comparison_rows,
    main,
    paired_utterances,
    word_error_rates,
)


def _report(hypotheses) -> dict:
    """An evaluate report with one greedy transcript per (where, split, subset, reference, text)."""
    return {'modes': {'greedy': {}},
            'hypotheses': [{'where': where, 'split': split, 'subset': subset, 'reference': reference,
                            'greedy': text} for where, split, subset, reference, text in hypotheses]}


REFERENCES = [('m.jsonl:1', 'test', 'natural', 'the cat sat on the mat'),
              ('m.jsonl:2', 'test', 'digits', 'call 5 5 1'),
              ('u.jsonl:1', 'test_unseen', 'natural', 'a dog ran home')]
A = _report([(*ref, text) for ref, text in zip(REFERENCES, ['the cat sat on a mat', 'call five five one',
                                                            'a dog ran home'])])
B = _report([(*ref, text) for ref, text in zip(REFERENCES, ['the bat sat on a hat', 'call 5 5 1',
                                                            'a frog ran'])])


def test_word_errors_per_split_and_subset_as_counted_by_hand():
    pairs = paired_utterances(A, B, 'greedy')
    test = [p for p in pairs if p.split == 'test']
    # A: 1 substitution in 10 words (spoken digits normalise to 5 5 1); B: 3 substitutions.
    assert word_error_rates(test) == (pytest.approx(0.1), pytest.approx(0.3))
    unseen = [p for p in pairs if p.split == 'test_unseen']
    assert word_error_rates(unseen) == (0.0, pytest.approx(2 / 4))  # B: 1 substitution, 1 deletion
    rows = {row[0].strip(): row for row in comparison_rows(pairs, draws=200, seed=0)}
    assert rows['test'][1:5] == ['2', '0.100', '0.300', '+0.200']
    assert rows['digits'][2:4] == ['0.000', '0.000']


def test_rows_per_group_where_the_reports_have_them():
    grouped_a, grouped_b = json.loads(json.dumps(A)), json.loads(json.dumps(B))
    for report in (grouped_a, grouped_b):
        for hypothesis, accent in zip(report['hypotheses'], ['en-us', 'en-gb', 'en-us-nyc']):
            hypothesis['group'] = accent
    rows = comparison_rows(paired_utterances(grouped_a, grouped_b, 'greedy'), 200, 0)
    labels = [row[0] for row in rows]
    assert labels == ['test', '  digits', '  natural', '  group en-gb', '  group en-us',
                      'test_unseen', '  natural', '  group en-us-nyc']
    assert rows[4][1:5] == ['1', '0.167', '0.500', '+0.333']  # the cat sentence: 1 and 3 of 6 words
    assert rows[-1][1:5] == ['1', '0.000', '0.500', '+0.500']
    assert not any('group' in row[0] for row in comparison_rows(paired_utterances(A, B, 'greedy'), 50, 0))


def test_identical_transcripts_differ_by_exactly_nothing():
    pairs = paired_utterances(A, A, 'greedy')
    assert bootstrap_difference(pairs, draws=100, seed=1) == (0.0, 0.0)


def test_the_interval_holds_the_difference_of_a_consistent_change():
    pairs = paired_utterances(A, B, 'greedy')
    low, high = bootstrap_difference(pairs, draws=500, seed=0)
    rate_a, rate_b = word_error_rates(pairs)
    assert low <= rate_b - rate_a <= high and low >= 0  # B is never better on any utterance


def test_reports_on_other_utterances_or_modes_are_refused():
    other = _report([('m.jsonl:1', 'test', 'natural', 'a different sentence', 'a different sentence')])
    with pytest.raises(ValueError, match="m.jsonl:1: the reports' references differ"):
        paired_utterances(A, other, 'greedy')
    with pytest.raises(ValueError, match='share no utterance'):
        paired_utterances(A, _report([('x.jsonl:9', 'test', 'natural', 'hi', 'hi')]), 'greedy')
    with pytest.raises(ValueError, match="no mode 'speculative'"):
        paired_utterances(A, B, 'speculative')


def test_command_prints_the_table_and_names_a_bad_file(tmp_path, capsys):
    path_a, path_b = tmp_path / 'a.json', tmp_path / 'b.json'
    path_a.write_text(json.dumps(A))
    path_b.write_text(json.dumps(B))
    main([str(path_a), str(path_b), '--draws', '50'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ['split', '/', 'subset']
    assert lines[1].split()[:5] == ['test', '2', '0.100', '0.300', '+0.200']
    (tmp_path / 'broken.json').write_text('{')
    with pytest.raises(SystemExit, match='broken.json: cannot read an evaluate report'):
        main([str(path_a), str(tmp_path / 'broken.json')])


def test_two_modes_of_one_report_compare_by_utterance(tmp_path, capsys):
    """``--mode-b``: B's mode where it differs, so two decoders of one model compare on one report."""
    both = json.loads(json.dumps(A))
    both['modes']['ctc_joint_0.3'] = {}
    for mine, theirs in zip(both['hypotheses'], B['hypotheses']):
        mine['ctc_joint_0.3'] = theirs['greedy']
    pairs = paired_utterances(both, both, 'greedy', 'ctc_joint_0.3')
    assert pairs == paired_utterances(A, B, 'greedy')
    with pytest.raises(ValueError, match="report B has no mode 'ctc_joint_0.5'"):
        paired_utterances(both, both, 'greedy', 'ctc_joint_0.5')
    path = tmp_path / 'r.json'
    path.write_text(json.dumps(both))
    main([str(path), str(path), '--mode-b', 'ctc_joint_0.3', '--draws', '50'])
    assert capsys.readouterr().out.splitlines()[1].split()[:5] == ['test', '2', '0.100', '0.300', '+0.200']
