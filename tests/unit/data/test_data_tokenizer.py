"""Tokenizers: byte-level default, Hugging Face tokenizer.json, SentencePiece; the factory."""


import pytest

from megatron_salm_mtp.data.prompts import required_special_tokens
from megatron_salm_mtp.data.tokenizer import ByteTokenizer, build_tokenizer
from tests.support.data_fixtures import TOKENIZER_CORPUS, hf_tokenizer_json

TEXT = 'Grüße, world! 4 7 1 9 <|im_end|>'


def test_byte_tokenizer():
    tok = build_tokenizer('byte', extra_special_tokens=required_special_tokens('llama3'))
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode('utf-8')) and max(ids) < 256  # specials in text stay text
    assert tok.decode(ids + [tok.eos_id, tok.audio_token_id]) == TEXT
    specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.audio_token_id, tok.special_id('<|im_end|>')}
    assert len(specials) == 5 and all(256 <= i < tok.vocab_size for i in specials)
    assert tok.vocab_size == ByteTokenizer.VOCAB_SIZE == 272
    assert tok.special_id('<|begin_of_text|>') == tok.bos_id
    with pytest.raises(KeyError):
        ByteTokenizer(['<|made_up|>'])


def test_hf_qwen_like(tmp_path):
    """ChatML specials, no BOS, audio token absent: it gets the first id after the vocabulary."""
    path = hf_tokenizer_json(tmp_path, ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
                             {'bos_token': None, 'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>'})
    tok = build_tokenizer('huggingface', str(tmp_path), extra_special_tokens=required_special_tokens('qwen'))
    import tokenizers

    base = tokenizers.Tokenizer.from_file(str(path)).get_vocab_size()
    assert tok.bos_id is None
    assert tok.eos_id == tok.special_id('<|im_end|>') and tok.pad_id == tok.special_id('<|endoftext|>')
    assert tok.audio_token_id == base and tok.vocab_size == base + 1
    ids = tok.encode(TEXT)
    assert tok.special_id('<|im_end|>') not in ids  # text is never parsed into specials
    assert tok.decode(ids + [tok.audio_token_id, tok.eos_id]) == TEXT


def test_hf_llama_like_with_audio_token_present(tmp_path):
    specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
                '<|audio|>']
    path = hf_tokenizer_json(tmp_path, specials)
    tok = build_tokenizer('hf', str(path), extra_special_tokens=required_special_tokens('llama3'))
    import tokenizers

    assert tok.bos_id == tok.special_id('<|begin_of_text|>') == 0
    assert tok.eos_id == 1 and tok.audio_token_id == 5
    assert tok.vocab_size == tokenizers.Tokenizer.from_file(str(path)).get_vocab_size()  # nothing added
    assert tok.pad_id == tok.eos_id  # no pad token in the vocabulary
    assert tok.decode(tok.encode('hello world')) == 'hello world'


def test_sentencepiece(tmp_path):
    spm = pytest.importorskip('sentencepiece')
    (tmp_path / 'c.txt').write_text('\n'.join(TOKENIZER_CORPUS))
    spm.SentencePieceTrainer.train(input=str(tmp_path / 'c.txt'), model_prefix=str(tmp_path / 'sp'), vocab_size=60,
                                   model_type='bpe', minloglevel=2)
    tok = build_tokenizer('spm', str(tmp_path / 'sp.model'), extra_special_tokens=required_special_tokens('qwen'))
    assert (tok.bos_id, tok.eos_id) == (1, 2) and tok.pad_id == tok.eos_id
    assert tok.audio_token_id == 60 and tok.special_id('<|im_start|>') == 61 and tok.vocab_size == 63
    assert tok.decode(tok.encode('hello world') + [tok.audio_token_id]) == 'hello world'


def test_factory_errors():
    with pytest.raises(ValueError, match='tokenizer_type'):
        build_tokenizer('wordpiece')
    with pytest.raises(ValueError, match='tokenizer_model'):
        build_tokenizer('huggingface')
