"""``--training-mode encoder_ctc --ctc-target-units phonemes`` end to end: the encoder's CTC head
learns espeak-ng's IPA of each line (its ``phonemes`` field, made here with the espeak-ng program
from the line's voice and text where the corpus lacks it); a manifest without the field, and a run
of other units loading the phoneme head, each stop with one error line."""

import json
import math
import os
import shutil
import subprocess

import pytest

from megatron_salm_mtp.data.manifest import write_manifest
from tests.support.train_utils import read_metrics, run_train

STAGE1 = ['--training-mode', 'encoder_ctc', '--ctc-loss-weight', '1', '--mtp-num-layers', '0']
PHONEMES = ['--ctc-target-units', 'phonemes']


def _ipa(voice: str, text: str) -> str:
    """What the corpus writes: espeak-ng's IPA, clause lines joined by single spaces."""
    out = subprocess.run(['espeak-ng', '-v', voice, '-q', '--ipa', text], capture_output=True, text=True,
                         check=True).stdout
    return ' '.join(line.strip() for line in out.splitlines() if line.strip())


@pytest.fixture(scope='module')
def phoneme_corpus(train_corpus, tmp_path_factory):
    """The shared training corpus's train and valid manifests with a ``phonemes`` field (audio paths
    made absolute: the manifests live elsewhere)."""
    if shutil.which('espeak-ng') is None:
        pytest.skip('no espeak-ng program to write the phonemes with')
    out = str(tmp_path_factory.mktemp('phoneme_corpus'))
    for split in ('train', 'valid'):
        with open(os.path.join(train_corpus, f'{split}.jsonl'), encoding='utf-8') as f:
            rows = [json.loads(line) for line in f]
        for row in rows:
            row['audio_filepath'] = os.path.join(train_corpus, row['audio_filepath'])
            row.setdefault('phonemes', _ipa(row['voice'], row['text']))
        write_manifest(os.path.join(out, f'{split}.jsonl'), rows)
    return out


def _without_phonemes(train_corpus: str, out: str) -> str:
    """The shared corpus's manifests as a corpus made before synth wrote phonemes."""
    os.makedirs(out, exist_ok=True)
    for split in ('train', 'valid'):
        with open(os.path.join(train_corpus, f'{split}.jsonl'), encoding='utf-8') as f:
            rows = [json.loads(line) for line in f]
        for row in rows:
            row['audio_filepath'] = os.path.join(train_corpus, row['audio_filepath'])
            row.pop('phonemes', None)
        write_manifest(os.path.join(out, f'{split}.jsonl'), rows)
    return out


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith('error: ')]


def test_stage_one_on_phonemes_learns_and_its_head_keeps_its_units(phoneme_corpus, train_corpus, tmp_path):
    stage1 = str(tmp_path / 'stage1')
    run_train(phoneme_corpus, STAGE1 + PHONEMES + ['--train-iters', '16', '--log-interval', '1',
                                                    '--eval-interval', '16', '--eval-iters', '1', '--save', stage1])
    records, valid = read_metrics(stage1), read_metrics(stage1, 'valid')
    losses = [r['ctc loss'] for r in records]
    assert len(losses) == 16 and all(math.isfinite(x) and x > 0 for x in losses)
    late = sum(losses[-4:]) / 4  # ~5.8 per phoneme against 13.8 at the first step
    assert late < 0.5 * losses[0], (losses[0], late)
    assert 0 < valid[-1]['ctc loss'] < losses[0]
    with open(os.path.join(phoneme_corpus, 'train.jsonl'), encoding='utf-8') as f:
        assert all(line['text'] and line['phonemes'] for line in map(json.loads, f))

    characters = run_train(phoneme_corpus, STAGE1 + ['--ctc-target-units', 'characters', '--load', stage1,
                                                     '--finetune', '--train-iters', '4'], check=False)
    errors = _errors(characters)
    assert characters.returncode != 0 and len(errors) == 1, characters.stderr[-3000:]
    assert 'its CTC head emits phonemes, this run has --ctc-target-units characters' in errors[0]

    bare_corpus = _without_phonemes(train_corpus, str(tmp_path / 'bare'))
    bare = run_train(bare_corpus, STAGE1 + PHONEMES + ['--train-iters', '4'], check=False)
    errors = _errors(bare)
    assert bare.returncode == 2 and len(errors) == 1, bare.stderr[-3000:]
    assert errors[0].startswith(f"error: --train-manifest {bare_corpus}/train.jsonl:1: no 'phonemes' field")
