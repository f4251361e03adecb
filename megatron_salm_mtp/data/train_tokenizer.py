"""Subword tokenizer for a corpus: ``python -m megatron_salm_mtp.data.train_tokenizer --manifest
train.jsonl --vocab-size 1024 --out tok.model`` trains a SentencePiece model on its transcripts.

Use it with ``--tokenizer-type sentencepiece --tokenizer-model tok.model``: the audio placeholder and
the prompt template's markers become virtual ids after its pieces (:mod:`.tokenizer`).

Choices, and why:

- unigram by default (``--model-type bpe`` for BPE): SentencePiece's default and the usual one for
  ASR tokenizers; both are fine at these sizes.
- exact round trip, ``decode(encode(text)) == text`` for any text: byte fallback (a character the
  pieces lack becomes its UTF-8 bytes, never ``<unk>``), no normalisation (``identity``: no NFKC,
  spaces kept as they are). Digits are not split apart from their space: a spoken digit string
  ``5 7 8`` is three pieces ``▁5 ▁7 ▁8``, not six.
- text: every transcript (answer text), and each distinct prompt once, so the prompt's words have
  pieces without outweighing the transcripts.
- ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3; the vocabulary holds the 256 byte pieces too, so
  ``--vocab-size`` must exceed 260. A small corpus may not support the size asked for: the model is
  then smaller, and the size written is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

from .manifest import read_manifests

BYTE_PIECES = 256
SPECIAL_PIECES = 4  # <unk>, <s>, </s>, <pad>
MODEL_TYPES = ('unigram', 'bpe')


def corpus_texts(manifests: list[str]) -> list[str]:
    """Transcripts of every example, then each distinct prompt (user text) once."""
    examples = read_manifests(manifests)
    answers = [ex.answer_text for ex in examples if ex.answer_text.strip()]
    prompts = {seg.value: None for ex in examples for seg in ex.segments
               if seg.role != 'assistant' and seg.kind == 'text' and seg.value.strip()}
    if not answers:
        raise ValueError(f"--manifest {','.join(manifests)}: no transcript to train on")
    return answers + list(prompts)


def train_tokenizer(manifests: list[str], vocab_size: int, out: str, model_type: str = 'unigram') -> int:
    """Train on ``manifests``' text and write the model to ``out``; returns its vocabulary size."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise ImportError('training a tokenizer needs the sentencepiece package '
                          '(pip install sentencepiece)') from None
    if model_type not in MODEL_TYPES:
        raise ValueError(f'--model-type must be one of {MODEL_TYPES}, got {model_type!r}')
    if vocab_size <= BYTE_PIECES + SPECIAL_PIECES:
        raise ValueError(f'--vocab-size {vocab_size} leaves no room for pieces beyond the '
                         f'{BYTE_PIECES} byte pieces and {SPECIAL_PIECES} specials')
    texts = corpus_texts(manifests)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, normalization_rule_name='identity',
        remove_extra_whitespaces=False, character_coverage=1.0,
        hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with open(out, 'wb') as f:
        f.write(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--manifest', action='append', required=True,
                   help='JSONL manifest whose text to train on (repeat the flag, or comma-separate)')
    p.add_argument('--vocab-size', type=int, default=1024, help='pieces, byte pieces and specials included')
    p.add_argument('--model-type', choices=MODEL_TYPES, default='unigram')
    p.add_argument('--out', required=True, help='where to write the SentencePiece .model')
    a = p.parse_args(argv)
    manifests = [m for arg in a.manifest for m in arg.split(',') if m]
    size = train_tokenizer(manifests, a.vocab_size, a.out, a.model_type)
    print(f"wrote {a.out}: {a.model_type} SentencePiece model of {size} pieces "
          f"(asked for {a.vocab_size}) from {', '.join(manifests)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
