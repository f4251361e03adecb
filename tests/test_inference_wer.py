"""Word error rate (inference/wer.py): normalisation, edit distance, corpus counting, jiwer."""

import pytest

from megatron_salm_mtp.inference.wer import ErrorCount, corpus_wer, normalise, word_edit_distance

PAIRS = [('the old dog found the river', 'the old dog found a river today'),
         ('call 5 5 1 2', 'call 5 1 2'),
         ('Ask Maria Lopez and John Smith', 'ask maria lopes and john smith'),
         ('seven words in this reference sentence here', ''),
         ("it's the teacher's book", 'its the teachers book')]


def test_normalise_case_punctuation_and_spaces():
    assert normalise("  Call 5, 5 1!  It's  OK.\n") == ['call', '5', '5', '1', "it's", 'ok']
    assert normalise('snake_case') == ['snake', 'case']


def test_edit_distance_counts_each_kind_of_error():
    assert word_edit_distance('a b c'.split(), 'a b c'.split()) == 0
    assert word_edit_distance('a b c'.split(), 'a x c'.split()) == 1  # substitution
    assert word_edit_distance('a b c'.split(), 'a c'.split()) == 1  # deletion
    assert word_edit_distance('a b c'.split(), 'a b c d e'.split()) == 2  # insertions
    assert word_edit_distance([], 'a b'.split()) == 2 and word_edit_distance('a b'.split(), []) == 2
    assert word_edit_distance('a b c d'.split(), 'b a d c'.split()) == 3


def test_corpus_wer_pools_errors_over_words():
    count = ErrorCount()
    count.add('a b c d', 'a b c d')
    count.add('a b', 'x')
    assert (count.errors, count.words) == (2, 6) and count.wer == pytest.approx(2 / 6)
    assert ErrorCount().wer == 0.0
    empty = ErrorCount()
    empty.add('', 'extra')
    assert empty.wer == float('inf')


def test_matches_jiwer():
    jiwer = pytest.importorskip('jiwer')
    refs = [' '.join(normalise(r)) for r, _ in PAIRS]
    hyps = [' '.join(normalise(h)) for _, h in PAIRS]
    assert corpus_wer(PAIRS) == pytest.approx(jiwer.wer(refs, hyps))
    for ref, hyp in zip(refs, hyps):
        assert corpus_wer([(ref, hyp)]) == pytest.approx(jiwer.wer(ref, hyp))
