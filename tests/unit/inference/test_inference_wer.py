"""Transcript scoring (inference/wer.py): raw and Whisper-style normalisation, the S/D/I split of
one alignment against an independent dynamic programme and jiwer, CER, pooled counts."""

import random

import pytest

from megatron_salm_mtp.inference.wer import ErrorCount, Scores, normalised_words, raw_words

PAIRS = [('the old dog found the river', 'the old dog found a river today'),
         ('call 5 5 1 2', 'call 5 1 2'),
         ('Ask Maria Lopez and John Smith', 'ask maria lopes and john smith'),
         ('seven words in this reference sentence here', ''),
         ("it's the teacher's book", 'its the teachers book')]


def edit_distance(reference, hypothesis) -> int:
    """Textbook Levenshtein DP, independent of the rapidfuzz alignment under test."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def test_raw_words_case_punctuation_and_spaces():
    assert raw_words("  Call 5, 5 1!  It's  OK.\n") == ['call', '5', '5', '1', "it's", 'ok']
    assert raw_words('snake_case') == ['snake', 'case']


@pytest.mark.parametrize('written, spoken', [
    ('Call 5 5 1!', 'call five five one'),
    ('call 551', 'call five five one'),
    ('colour', 'color'),
    ('The Centre organised a programme.', 'the center organized a program'),
    ("it's", 'it is'),
    ("He won't go, I'm sure.", 'he will not go i am sure'),
    ('twenty one', '21'),
    ('twenty-one', '2 1'),
    ('4 0 7 2', 'four zero seven two'),
    ('4 0 7 2', 'four oh seven two'),
    ('the code is 1 4 4 1 0 0 3', 'The code is one four four one zero zero three.'),
    ('Um, I think uh yes', 'i think yes'),
    ('nineteen ninety five', '1995'),
    ('$205', 'two hundred and five dollars'),
    ('1 1', 'one one'),
])
def test_normaliser_maps_both_forms_to_one(written, spoken):
    assert normalised_words(written) == normalised_words(spoken)


def test_normaliser_keeps_what_differs():
    assert normalised_words('the one and only') == ['the', 'one', 'and', 'only']  # a lone "one" is a word
    assert normalised_words('call 5 5 1') == ['call', '5', '5', '1']  # digits scored one by one
    assert normalised_words('4 0 7 2') != normalised_words('4 0 7 3')
    assert normalised_words('the colour red') != normalised_words('the colour read')


def test_one_alignment_gives_substitutions_deletions_insertions():
    cases = {('a b c', 'a b c'): (0, 0, 0), ('a b c', 'a x c'): (1, 0, 0), ('a b c', 'a c'): (0, 1, 0),
             ('a b c', 'a b c d e'): (0, 0, 2), ('', 'a b'): (0, 0, 2), ('a b', ''): (0, 2, 0),
             ('a b c d', 'x b c d e'): (1, 0, 1)}
    for (ref, hyp), expected in cases.items():
        count = ErrorCount()
        count.add(ref.split(), hyp.split())
        assert (count.substitutions, count.deletions, count.insertions) == expected, (ref, hyp)
        assert count.errors == edit_distance(ref.split(), hyp.split()) and count.reference == len(ref.split())


def test_alignment_is_minimal_on_random_sequences():
    rng = random.Random(0)
    for _ in range(300):
        ref = [rng.choice('abcd') for _ in range(rng.randint(0, 9))]
        hyp = [rng.choice('abcde') for _ in range(rng.randint(0, 9))]
        count = ErrorCount()
        count.add(ref, hyp)
        assert count.errors == edit_distance(ref, hyp)
        assert count.deletions - count.insertions == len(ref) - len(hyp)  # matched words: ref - S - D = hyp - S - I


def test_pooled_rates():
    count = ErrorCount()
    count.add('a b c d'.split(), 'a b c d'.split())
    count.add('a b'.split(), ['x'])
    assert (count.errors, count.reference) == (2, 6) and count.rate == pytest.approx(2 / 6)
    assert ErrorCount().rate == 0.0
    empty = ErrorCount()
    empty.add([], ['extra'])
    assert empty.rate == float('inf')


def test_scores_raw_beside_normalised_and_cer():
    scores = Scores()
    scores.add('Call 5 5 1, colour it red.', 'call five five one color it read')
    figures = scores.figures()
    assert (figures['reference_words'], figures['word_errors'], figures['substitutions']) == (7, 1, 1)
    assert figures['wer'] == pytest.approx(1 / 7)
    # raw: five/5, five/5, one/1, color/colour, read/red differ
    assert (figures['raw_reference_words'], figures['raw_word_errors']) == (7, 5)
    assert figures['wer_raw'] == pytest.approx(5 / 7)
    # normalised "call 5 5 1 color it red" vs "... it read": one inserted character
    assert (figures['char_errors'], figures['reference_chars']) == (1, len('call 5 5 1 color it red'))
    assert figures['word_errors'] == figures['substitutions'] + figures['deletions'] + figures['insertions']


def test_scores_merge_equals_scoring_together():
    together, parts = Scores(), Scores()
    for ref, hyp in PAIRS:
        together.add(ref, hyp)
        one = Scores()
        one.add(ref, hyp)
        parts.merge(one)
    assert together.figures() == parts.figures()


def test_matches_jiwer():
    jiwer = pytest.importorskip('jiwer')
    refs = [' '.join(normalised_words(r)) for r, _ in PAIRS]
    hyps = [' '.join(normalised_words(h)) for _, h in PAIRS]
    scores = Scores()
    for ref, hyp in PAIRS:
        scores.add(ref, hyp)
    figures = scores.figures()
    words = jiwer.process_words(refs, hyps)
    assert figures['wer'] == pytest.approx(words.wer)
    assert (figures['substitutions'], figures['deletions'], figures['insertions']) == \
        (words.substitutions, words.deletions, words.insertions)
    assert figures['cer'] == pytest.approx(jiwer.cer(refs, hyps))
    raw = [(' '.join(raw_words(r)), ' '.join(raw_words(h))) for r, h in PAIRS]
    assert figures['wer_raw'] == pytest.approx(jiwer.wer([r for r, _ in raw], [h for _, h in raw]))
