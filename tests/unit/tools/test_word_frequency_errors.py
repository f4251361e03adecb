"""word_frequency_errors puts each reference word of a report in a band by its count in the training
transcripts and counts the wrong ones (substituted or deleted) per split, subset and band, as
counted by hand here; a bad report or manifest is a one-line error naming it."""

import json

import pytest

from megatron_salm_mtp.tools.word_frequency_errors import band_counts, band_names, main, training_word_counts
from tests.support.data_fixtures import write_manifest

TRAIN = ['the cat sat', 'the cat ran', 'The dog sat.', 'the end']  # the: 4, cat: 2, sat: 2, dog/ran/end: 1
REPORT = {'modes': {'greedy': {}}, 'hypotheses': [
    # 'zebra' never in training and substituted; 'the' (4) right; 'cat' (2) deleted.
    {'where': 'm:1', 'split': 'test', 'subset': 'natural', 'reference': 'The zebra cat', 'greedy': 'the seebra'},
    # 'dog' (1) right, 'sat' (2) substituted, an insertion that belongs to no reference word.
    {'where': 'm:2', 'split': 'test', 'subset': 'names', 'reference': 'dog sat', 'greedy': 'dog set down'},
]}


@pytest.fixture
def train_manifest(tmp_path):
    path = tmp_path / 'train.jsonl'
    write_manifest(str(path), [{'audio_filepath': f'{i}.wav', 'duration': 1.0, 'text': t} for i, t in enumerate(TRAIN)])
    return str(path)


def test_training_counts_are_of_normalised_words(train_manifest):
    counts = training_word_counts(train_manifest)
    assert counts['the'] == 4 and counts['cat'] == 2 and counts['dog'] == 1 and counts['zebra'] == 0


def test_bands_count_wrong_reference_words_as_by_hand(train_manifest):
    table = band_counts(REPORT, training_word_counts(train_manifest), 'greedy', [0, 1, 3])
    assert band_names([0, 1, 3]) == ['never', '1', '2-3', '>3']
    def figures(key):
        return [(b.words, b.wrong) for b in table[key]]
    assert figures(('test', 'natural')) == [(1, 1), (0, 0), (1, 1), (1, 0)]
    assert figures(('test', 'names')) == [(0, 0), (1, 0), (1, 1), (0, 0)]
    assert figures(('test', '')) == [(1, 1), (1, 0), (2, 2), (1, 0)]


def test_the_cli_prints_the_table_and_names_bad_inputs(train_manifest, tmp_path, capsys):
    report = tmp_path / 'report.json'
    report.write_text(json.dumps(REPORT))
    main([str(report), '--train-manifest', train_manifest, '--bands', '0', '1', '3'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ['test', 'never', '1', '20%', '1.000', '33%']
    with pytest.raises(SystemExit, match='no such file'):
        main([str(report), '--train-manifest', str(tmp_path / 'missing.jsonl')])
    with pytest.raises(SystemExit, match="no mode 'beam'"):
        main([str(report), '--train-manifest', train_manifest, '--mode', 'beam'])
    with pytest.raises(SystemExit, match='--bands must be increasing'):
        main([str(report), '--train-manifest', train_manifest, '--bands', '5', '5'])
    (tmp_path / 'bad.json').write_text('{')
    with pytest.raises(SystemExit, match='bad.json: cannot read an evaluate report'):
        main([str(tmp_path / 'bad.json'), '--train-manifest', train_manifest])
