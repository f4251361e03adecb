"""``python -m megatron_salm_mtp.data.train_tokenizer``: a SentencePiece model trained on a corpus's
transcripts, used through ``--tokenizer-type sentencepiece``; exact round trips."""

import pickle

import pytest

from megatron_salm_mtp.data.manifest import read_manifest
from megatron_salm_mtp.data.prompts import required_special_tokens
from megatron_salm_mtp.data.tokenizer import build_tokenizer
from megatron_salm_mtp.data.train_tokenizer import main, train_tokenizer
from tests.support.data_fixtures import write_manifest

pytest.importorskip('sentencepiece')

WORDS = ('send it to arjun patel the code is one four seven please call maria lopez about the '
         'meeting on tuesday weather will be sunny with light winds from the north east').split()
ROUND_TRIPS = ['send it to arjun patel', ' leading and trailing  spaces ', 'tab\tand\nnewline',
               'Grüße, wörld! 😀 日本語', 'the code is 1 4 4 1 0 0 3', '<|audio|> <|im_end|>', '']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tok')
    texts = [' '.join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6 + i % 5)) for i in range(300)]
    rows = [{'audio_filepath': f'{i}.wav', 'text': text, **({'prompt': 'Write down what is said.'} if i % 2 else {})}
            for i, text in enumerate(texts)]
    manifest = write_manifest(folder / 'train.jsonl', rows)
    out = str(folder / 'tok.model')
    assert main(['--manifest', manifest, '--vocab-size', '320', '--out', out]) == 0
    return manifest, out


def test_round_trip_is_exact_and_transcripts_are_compressed(corpus):
    manifest, model = corpus
    tok = build_tokenizer('sentencepiece', model, extra_special_tokens=required_special_tokens('llama3'))
    for text in ROUND_TRIPS:
        assert tok.decode(tok.encode(text)) == text
    transcripts = [ex.answer_text for ex in read_manifest(manifest)]
    ids = sum(len(tok.encode(t)) for t in transcripts)
    assert ids < 0.4 * sum(len(t.encode()) for t in transcripts)  # pieces are words, not letters
    # The prompt's text is trained on too: its characters are pieces, an unseen one is bytes.
    sp = tok._sp_model
    assert not any(sp.is_byte(i) for i in tok.encode('W.')) and any(sp.is_byte(i) for i in tok.encode('Q'))


def test_specials_are_virtual_ids_after_the_pieces(corpus):
    _, model = corpus
    tok = build_tokenizer('sentencepiece', model, extra_special_tokens=required_special_tokens('qwen'))
    pieces = tok._sv.base_size
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (3, 1, 2)
    assert tok.audio_token_id == pieces
    assert {tok.special_id('<|im_start|>'), tok.special_id('<|im_end|>')} == {pieces + 1, pieces + 2}
    assert tok.vocab_size == pieces + 3
    assert tok.audio_token_id not in tok.encode('<|audio|>')  # text never becomes a special


def test_workers_get_a_working_copy(corpus):
    """DataLoader workers started by spawn receive the tokenizer pickled."""
    _, model = corpus
    tok = build_tokenizer('sentencepiece', model)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode('send it to maria') == tok.encode('send it to maria')


def test_bpe_round_trips_too(corpus, tmp_path):
    manifest, _ = corpus
    out = str(tmp_path / 'bpe.model')
    size = train_tokenizer([manifest], 320, out, model_type='bpe')
    tok = build_tokenizer('sentencepiece', out)
    assert tok.vocab_size == size + 1  # the audio placeholder
    for text in ROUND_TRIPS:
        assert tok.decode(tok.encode(text)) == text


def test_bad_requests_name_the_flag(corpus, tmp_path):
    manifest, _ = corpus
    with pytest.raises(ValueError, match='--vocab-size'):
        train_tokenizer([manifest], 200, str(tmp_path / 'x.model'))
    with pytest.raises(ValueError, match='--model-type'):
        train_tokenizer([manifest], 400, str(tmp_path / 'x.model'), model_type='word')
    empty = write_manifest(tmp_path / 'empty.jsonl', [{'audio_filepath': 'a.wav', 'text': ' '}])
    with pytest.raises(ValueError, match='no transcript'):
        train_tokenizer([empty], 400, str(tmp_path / 'x.model'))
