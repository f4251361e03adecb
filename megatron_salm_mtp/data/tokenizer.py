"""Tokenizers behind one interface: byte-level (default, no files), Hugging Face ``tokenizer.json``,
SentencePiece.

Why special tokens are never parsed out of text: prompt templates ask for them by name
(:meth:`Tokenizer.special_id`) and :meth:`Tokenizer.encode` treats its input as plain text, so a
transcript that happens to contain ``<|im_end|>`` cannot inject a turn boundary.

Why "virtual" tokens: a pretrained vocabulary may lack the audio placeholder (or a chat template's
markers). Rather than editing the user's tokenizer file, such tokens get ids right after the base
vocabulary (``vocab_size`` grows accordingly; the model sizes its embedding from ``vocab_size``).
For Qwen, whose embedding table (151,936) is larger than its tokenizer, the new ids fall inside
the existing table.
"""

from __future__ import annotations

import json
import os

AUDIO_TOKEN = '<|audio|>'


class Tokenizer:
    """The interface the data pipeline and the model rely on."""

    vocab_size: int
    pad_id: int
    bos_id: int | None  # None where the family has no BOS (Qwen)
    eos_id: int
    audio_token_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Text of ``ids``; special and placeholder tokens are dropped."""
        raise NotImplementedError

    def special_id(self, token: str) -> int:
        """Id of a special token by its string (e.g. ``<|im_start|>``); KeyError if unknown."""
        raise NotImplementedError


class _VirtualSpecials:
    """Specials appended after a base vocabulary of ``base_size`` ids."""

    def __init__(self, base_size: int, lookup, wanted: list[str]):
        self.base_size = base_size
        self.ids: dict[str, int] = {}
        self.virtual: dict[str, int] = {}
        for tok in dict.fromkeys(wanted):
            found = lookup(tok)
            if found is None:
                found = base_size + len(self.virtual)
                self.virtual[tok] = found
            self.ids[tok] = found

    @property
    def size(self) -> int:
        return self.base_size + len(self.virtual)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255, then fixed specials (the tiny-model default; no files needed).

    The special list is fixed and padded with reserved slots to 272 ids so that adding a special later
    does not change ``vocab_size`` (and thus checkpoints) of existing runs.
    """

    SPECIALS = ('<pad>', '<bos>', '<eos>', AUDIO_TOKEN, '<|start_header_id|>', '<|end_header_id|>',
                '<|eot_id|>', '<|im_start|>', '<|im_end|>')
    VOCAB_SIZE = 272

    def __init__(self, extra_special_tokens=()):
        names = list(self.SPECIALS) + [f'<|reserved_{i}|>' for i in range(self.VOCAB_SIZE - 256 - len(self.SPECIALS))]
        self._ids = {n: 256 + i for i, n in enumerate(names)}
        aliases = {'<|begin_of_text|>': '<bos>', '<|end_of_text|>': '<eos>', '<|endoftext|>': '<eos>'}
        for a, target in aliases.items():
            self._ids[a] = self._ids[target]
        missing = [t for t in extra_special_tokens if t not in self._ids]
        if missing:
            raise KeyError(f'byte tokenizer has no special token(s) {missing}; it knows {list(self.SPECIALS)}')
        self.vocab_size = self.VOCAB_SIZE
        self.pad_id, self.bos_id, self.eos_id = self._ids['<pad>'], self._ids['<bos>'], self._ids['<eos>']
        self.audio_token_id = self._ids[AUDIO_TOKEN]

    def encode(self, text: str) -> list[int]:
        return list(text.encode('utf-8'))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')

    def special_id(self, token: str) -> int:
        return self._ids[token]


def _token_content(v):
    """tokenizer_config.json stores specials as a string or as {"content": ...}."""
    return v.get('content') if isinstance(v, dict) else v


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (Llama 3, Qwen, ...) through the ``tokenizers`` library.

    BOS/EOS/pad come from ``tokenizer_config.json`` beside the file when present, else from the
    usual names. ``encode`` adds no BOS/EOS (templates place them).
    """

    _BOS = ('<|begin_of_text|>', '<s>', '<bos>')
    _EOS = ('<|end_of_text|>', '<|endoftext|>', '</s>', '<eos>')
    _PAD = ('<pad>', '<|finetune_right_pad_id|>', '<|endoftext|>')

    def __init__(self, path: str, audio_token: str = AUDIO_TOKEN, extra_special_tokens=()):
        from tokenizers import Tokenizer as _HF

        file = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f'tokenizer file not found: {file}')
        self._tok = _HF.from_file(file)
        self._tok.encode_special_tokens = True  # text such as "<|im_end|>" in a transcript stays text
        vocab = self._tok.get_vocab(with_added_tokens=True)
        base = max(vocab.values()) + 1
        cfg = {}
        cfg_file = os.path.join(os.path.dirname(os.path.abspath(file)), 'tokenizer_config.json')
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding='utf-8') as f:
                cfg = json.load(f)

        def pick(key, candidates):
            tok = _token_content(cfg.get(key))
            if tok is not None and tok in vocab:
                return tok
            return next((c for c in candidates if c in vocab), None)

        bos, eos, pad = pick('bos_token', self._BOS), pick('eos_token', self._EOS), pick('pad_token', self._PAD)
        if bos is None and 'bos_token' not in cfg and '<|im_start|>' not in vocab:
            bos = '<bos>'  # non-chat families get a (virtual) BOS; ChatML families have none
        wanted = [t for t in (bos, eos or '<eos>', pad or eos or '<eos>', audio_token) if t]
        wanted += list(extra_special_tokens)
        self._sp = _VirtualSpecials(base, vocab.get, wanted)
        self.vocab_size = self._sp.size
        self.bos_id = self._sp.ids[bos] if bos else None
        self.eos_id = self._sp.ids[eos or '<eos>']
        self.pad_id = self._sp.ids[pad or eos or '<eos>']
        self.audio_token_id = self._sp.ids[audio_token]
        self._vocab = vocab

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) < self._sp.base_size], skip_special_tokens=True)

    def special_id(self, token: str) -> int:
        if token in self._sp.ids:
            return self._sp.ids[token]
        if token in self._vocab:
            return self._vocab[token]
        raise KeyError(f'tokenizer has no token {token!r}')


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model``; specials it lacks become virtual ids after its pieces."""

    def __init__(self, path: str, audio_token: str = AUDIO_TOKEN, extra_special_tokens=()):
        import sentencepiece as spm

        if not os.path.isfile(path):
            raise FileNotFoundError(f'SentencePiece model not found: {path}')
        self._sp_model = spm.SentencePieceProcessor(model_file=path)
        sp = self._sp_model
        base = sp.get_piece_size()

        def lookup(tok):
            i = sp.piece_to_id(tok)
            return None if i == sp.unk_id() and tok != sp.id_to_piece(sp.unk_id()) else i

        named = {'bos': sp.bos_id(), 'eos': sp.eos_id(), 'pad': sp.pad_id()}
        names = {k: (sp.id_to_piece(v) if v >= 0 else f'<{k}>') for k, v in named.items()}
        if named['pad'] < 0:
            names['pad'] = names['eos']
        self._sv = _VirtualSpecials(base, lookup, [names['bos'], names['eos'], names['pad'], audio_token,
                                                   *extra_special_tokens])
        self.vocab_size = self._sv.size
        self.bos_id, self.eos_id = self._sv.ids[names['bos']], self._sv.ids[names['eos']]
        self.pad_id = self._sv.ids[names['pad']]
        self.audio_token_id = self._sv.ids[audio_token]

    def encode(self, text: str) -> list[int]:
        return list(self._sp_model.encode(text))

    def decode(self, ids) -> str:
        return self._sp_model.decode([int(i) for i in ids if int(i) < self._sv.base_size])

    def special_id(self, token: str) -> int:
        if token in self._sv.ids:
            return self._sv.ids[token]
        raise KeyError(f'tokenizer has no special token {token!r}')


TOKENIZER_TYPES = ('byte', 'huggingface', 'sentencepiece')


def build_tokenizer(tokenizer_type: str = 'byte', tokenizer_model: str | None = None,
                    audio_token: str = AUDIO_TOKEN, extra_special_tokens=()) -> Tokenizer:
    """Factory from config: ``tokenizer_type`` in {byte, huggingface (hf), sentencepiece (spm)}.

    ``extra_special_tokens`` are the prompt template's markers (``prompts.required_special_tokens``).
    """
    kind = {'hf': 'huggingface', 'spm': 'sentencepiece'}.get(tokenizer_type, tokenizer_type)
    if kind == 'byte':
        if audio_token != AUDIO_TOKEN:
            raise ValueError(f"the byte tokenizer's audio token is fixed to {AUDIO_TOKEN}")
        return ByteTokenizer(extra_special_tokens)
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f'tokenizer_type must be one of {TOKENIZER_TYPES} (or hf, spm), got {tokenizer_type!r}')
    if not tokenizer_model:
        raise ValueError(f'tokenizer_type={kind} needs tokenizer_model (a file or folder path)')
    if kind == 'huggingface':
        return HFTokenizer(tokenizer_model, audio_token, extra_special_tokens)
    return SentencePieceTokenizer(tokenizer_model, audio_token, extra_special_tokens)
