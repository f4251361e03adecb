"""The steered decoders' word list (``inference/lexicon.py``): the penalties of every candidate at
every step equal those of a bookkeeping of the rows' words as strings (byte and SentencePiece
tokenizers, rows that continue other rows' candidates as beam search's do), the chooser leaves
the LLM's choice for a listed word, and steered greedy decoding with a list that holds every word
it wrote changes nothing while a list of single letters changes the transcripts."""

import random

import pytest
import torch

from megatron_salm_mtp.data.ctc_text import spelled, spelled_pieces
from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from megatron_salm_mtp.inference.ctc_beam import joint_ctc_beam_decode
from megatron_salm_mtp.inference.ctc_joint import JointCTCChooser, token_spelling
from megatron_salm_mtp.inference.decode import joint_ctc_decode
from megatron_salm_mtp.inference.lexicon import LexiconRows, build_lexicon, lexicon_words
from tests.support.data_fixtures import write_manifest
from tests.support.inference_fixtures import EOS_ID, letter_writing_salm, random_prompts, written_by
from tests.unit.inference.test_ctc_joint import RecordingScorer, _sentencepiece

WORDS = {'send', 'it', 'to', 'the', 'code', 'is', 'one', 'four', "it's", 'five', 'a', 'an', 'and', 'on'}


def reference_step(state: tuple[str, bool], text: str, stop: bool, words: set[str]):
    """(words newly found off the list, the row's next (word, paid)) by string bookkeeping."""
    prefixes = {w[:i] for w in words for i in range(1, len(w) + 1)}
    partial, paid = state
    segments = (text + ' ' if stop else text).split(' ')
    if len(segments) == 1:
        grown = partial + text
        off = grown != '' and grown not in prefixes
        return int(off and not paid), (grown, paid or off)
    ended = partial + segments[0]
    missing = int(ended != '' and not paid and ended not in words)
    missing += sum(s not in words for s in segments[1:-1] if s)
    following = segments[-1]
    off = following != '' and following not in prefixes
    return missing + int(off), (following, off)


@pytest.mark.parametrize('kind', ['byte', 'sentencepiece'])
def test_penalties_equal_the_bookkeeping_of_words_as_strings(kind, tmp_path):
    tokenizer = ByteTokenizer() if kind == 'byte' else _sentencepiece(tmp_path)
    vocab = tokenizer.vocab_size
    pieces = spelled_pieces(tokenizer, vocab)
    stop = torch.zeros(vocab, dtype=torch.bool)
    stop[EOS_ID] = True
    lexicon = build_lexicon(WORDS, tokenizer, vocab, 'cpu').with_penalty(1.0)
    # Draw candidates mostly among the pieces that spell listed words, so that rows stay on the list a while.
    listed = [t for t in range(vocab) if pieces[t].strip() and all(
        any(w.startswith(s) or s in WORDS for w in WORDS) for s in pieces[t].split())] + [EOS_ID]
    rng = random.Random(0)
    rows, k = 4, 5
    states = [('', False)] * rows
    words = LexiconRows(lexicon, rows, stop)
    checked = 0
    for _ in range(40):
        candidates = torch.tensor([[rng.choice(listed) if rng.random() < 0.7 else rng.randrange(vocab)
                                    for _ in range(k)] for _ in range(rows)])
        penalties, step = words.extend(candidates)
        expected = [[reference_step(states[r], pieces[t], bool(stop[t]), WORDS) for t in candidates[r].tolist()]
                    for r in range(rows)]
        assert penalties.tolist() == [[float(m) for m, _ in row] for row in expected]
        checked += sum(m > 0 for row in expected for m, _ in row)
        source = torch.tensor([rng.randrange(rows) for _ in range(rows)])  # beam search's reordering
        choice = torch.tensor([rng.randrange(k) for _ in range(rows)])
        words.take(step, choice, source)
        states = [expected[s][c][1] for s, c in zip(source.tolist(), choice.tolist())]
    assert checked > 20  # words left the list often enough for the test to mean something


def test_lexicon_words_are_spelled_as_the_head_spells(tmp_path):
    manifest = write_manifest(tmp_path / 'm.jsonl', [{'audio_filepath': 'a.wav', 'text': "Send it, it's 5!"}])
    assert lexicon_words(str(manifest)) == {'send', 'it', "it's", '5'}
    with pytest.raises(ValueError, match='holds no word'):
        build_lexicon({''}, ByteTokenizer(), 10, 'cpu')
    with pytest.raises(ValueError, match='lexicon penalty 0: must be > 0'):
        build_lexicon({'a'}, ByteTokenizer(), 10, 'cpu').with_penalty(0)


def _choices(steps: list[dict[str, float]], words: set[str] | None, penalty: float = 2.0) -> str:
    """The text the chooser writes for the LLM's ``steps`` (characters, or 'eos'), CTC silent."""
    tokenizer = ByteTokenizer()
    vocab = tokenizer.vocab_size
    stop = torch.zeros(vocab, dtype=torch.bool)
    stop[EOS_ID] = True
    lexicon = build_lexicon(words, tokenizer, vocab, 'cpu').with_penalty(penalty) if words else None
    chooser = JointCTCChooser(RecordingScorer(1), token_spelling(tokenizer, vocab, 'cpu'), 0.5, stop, lexicon)
    return written_by(chooser, steps)


def test_a_word_off_the_list_gives_way_to_a_listed_one():
    steps = [{'x': 5.0, 'a': 4.0}, {'b': 5.0}, {'eos': 5.0}]
    assert _choices(steps, None) == 'xb<eos>'
    assert _choices(steps, {'ab'}) == 'ab<eos>'  # 'x' starts no word: it pays 2 against a margin of 0.5
    assert _choices(steps, {'ab'}, penalty=0.25) == 'xb<eos>'  # a smaller penalty than the margin
    ending = [{'a': 5.0}, {' ': 5.0, 'b': 4.9}, {'eos': 5.0}]
    assert _choices(ending, {'ab'}) == 'ab<eos>'  # 'a' starts 'ab' but ends no word
    assert _choices(ending, {'ab', 'a'}) == 'a <eos>'


@pytest.fixture(scope='module')
def steered(single_rank_parallel):
    model = letter_writing_salm()
    tokenizer = ByteTokenizer()
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    return model, tokenizer, token_spelling(tokenizer, model.cfg.vocab_size, 'cpu'), batch


def test_a_list_of_every_word_written_changes_nothing_and_one_of_letters_does(steered):
    """The steered greedy decoder: the candidate it chose never pays, the others can only lose.
    (Not so for a beam: with the others lower it may keep a hypothesis it pruned before and find a
    transcript that scores better; test_ctc_beam.py checks the beam with a list against a search
    of full forwards instead.)"""
    model, tokenizer, spelling, batch = steered
    vocab = model.cfg.vocab_size

    def decode(lexicon=None):
        return joint_ctc_decode(model, batch, 12, [EOS_ID], vocab, 0.7, spelling, lexicon=lexicon)[0]

    plain = decode()
    written = set(spelled(' '.join(tokenizer.decode([t for t in row if t != EOS_ID]) for row in plain)).split())
    assert len(written) >= 3
    assert decode(build_lexicon(written, tokenizer, vocab, 'cpu').with_penalty(50.0)) == plain
    letters = build_lexicon(set('abcdefghijklmnopqrstuvwxyz'), tokenizer, vocab, 'cpu')  # no word of two
    assert decode(letters.with_penalty(50.0)) != plain


def test_a_beam_of_one_with_a_lexicon_is_the_steered_greedy_decoder_with_it(steered):
    model, tokenizer, spelling, batch = steered
    vocab = model.cfg.vocab_size
    lexicon = build_lexicon(set('abcdefghijklmnopqrstuvwxyz'), tokenizer, vocab, 'cpu').with_penalty(1.0)
    greedy = joint_ctc_decode(model, batch, 12, [EOS_ID], vocab, 0.7, spelling, lexicon=lexicon)[0]
    assert joint_ctc_beam_decode(model, batch, 12, [EOS_ID], vocab, 0.7, spelling, 1, lexicon=lexicon)[0] == greedy
