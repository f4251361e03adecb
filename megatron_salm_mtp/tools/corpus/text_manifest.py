"""Text-only training manifest from the corpus's text pool:
``python -m megatron_salm_mtp.tools.corpus.text_manifest --text-source POOLS --out train_text.jsonl``.

Why: the recogniser's LLM learns English only from the speech corpus's transcripts, and those draw
a part of the pool's training share at random (docs/quality.md). This writes every sentence and
definition of that share, as the corpus's transcripts spell them, once each: a NeMo conversation
line with no audio, a user prompt and the text as the assistant's answer. No text of valid, test
or test_unseen is ever written: a text's split is the hash of its transcript, as the corpus draws
them (``synth_text.text_split``). A text stage of the LLM trains on it
(``configs/asr_gpu_text.yaml``, ``tests/gpu/recogniser.sh``); it also mixes into a joint run's
``--train-manifest`` list.

The prompt is not the transcription task's: a model asked to transcribe should never learn to
answer without listening.
"""

import argparse
import sys

from ...data.manifest import write_manifest
from .synth_text import split_texts
from .text_clean import transcript
from .text_source import TextSourceError, load_text_source

DEFAULT_PROMPT = 'Write a sentence.'


def training_texts(text_source: str | None) -> list[str]:
    """The transcripts of the pool's training share (sentences, then definitions), each once."""
    train = split_texts(load_text_source(text_source))['train']
    return list(dict.fromkeys(t for t in map(transcript, train.sentences + train.phrases) if t))


def conversation(text: str, prompt: str) -> dict:
    return {'conversations': [{'from': 'User', 'type': 'text', 'value': prompt},
                              {'from': 'Assistant', 'type': 'text', 'value': text}]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.tools.corpus.text_manifest',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='the manifest to write (JSONL)')
    p.add_argument('--text-source', default=None,
                   help='WordNet folder or pools file, as given to synth; default: the Debian wordnet-base folder')
    p.add_argument('--prompt', default=DEFAULT_PROMPT, help='the user turn of every line')
    a = p.parse_args(argv)
    try:
        texts = training_texts(a.text_source)
    except TextSourceError as e:
        print(f'{p.prog}: error: {e}', file=sys.stderr)
        return 2
    write_manifest(a.out, [conversation(t, a.prompt) for t in texts])
    words = [w for t in texts for w in t.split()]
    print(f'wrote {len(texts)} texts of the training share ({len(words)} words, '
          f'{len({w.lower() for w in words})} distinct) to {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
