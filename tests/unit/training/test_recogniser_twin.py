"""The CPU twin of the recogniser recipe learns to listen: voices and digit strings it never trained
on are transcribed far better with their audio than with it silenced.

End to end through the real entry points, as docs/quality.md ("The CPU twin") describes: the
digits corpus (``tools.corpus.synth --subsets digits``), its BPE tokenizer, stage 1 (``train`` with
configs/asr_tiny_cpu_encoder.yaml: encoder + CTC head alone), stage 2 (``train`` with
configs/asr_tiny_cpu.yaml, ``--load STAGE1 --finetune``), then ``evaluate --audio-ablation
--ctc-greedy --ctc-joint-weight 0.3`` on ``test_unseen``. The bounds are the measured figures with a
margin for other machines and releases (CPU arithmetic, espeak-ng builds): see ``WER_BOUND`` and
``SILENCE_GAP``.
"""

import json
import os
import subprocess

import pytest

from megatron_salm_mtp.data.train_tokenizer import train_tokenizer
from megatron_salm_mtp.tools.corpus.espeak import espeak_available
from megatron_salm_mtp.tools.corpus.synth import build_corpus
from megatron_salm_mtp.tools.corpus.text_source import default_text_source
from tests.support.process import ROOT, preimported_python

UTTERANCES = 1200  # 840 train, 120 test_unseen
# Measured (2 cores, megatron-core 0.16.1, espeak-ng 1.51): WER 0.662 with the audio, 0.873 silenced;
# CER 0.368 / 0.667 (corpus seeds 1 and 2: WER 0.603 and 0.644). The bounds leave 0.09 of WER and
# half the smallest measured gap for other machines and releases, whose arithmetic takes the
# training elsewhere: changes elsewhere in the code, none to the recipe, once moved this seed from
# 0.694 to 0.800 at lr 3e-3.
WER_BOUND = 0.75
SILENCE_GAP = 0.10  # the silenced WER (and CER) is at least this much higher
# The CTC head alone (evaluate --ctc-greedy), measured CER 0.655 (WER 0.820); an untrained head emits
# blanks (CER 1.0), so the bound says the encoder itself heard the digits.
CTC_CER_BOUND = 0.80
# Greedy decoding steered by that head (evaluate --ctc-joint-weight 0.3), measured WER 0.642 against
# greedy's 0.662: a head that steered with a wrong spelling of the text would cost words instead.
JOINT_WER_MARGIN = 0.03

pytestmark = [pytest.mark.quality, pytest.mark.skipif(
    not espeak_available() or default_text_source() is None,
    reason="the twin's corpus needs espeak-ng (apt-get install espeak-ng, or pip install espeakng-loader) "
           "and WordNet (apt-get install wordnet-base)")]


def _run(module: str, args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    result = subprocess.run([*preimported_python(), '-m', module] + [str(a) for a in args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f'{module} {args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
    return result


def _metrics(folder: str, split: str) -> list:
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['split'] == split]


def test_the_twin_transcribes_unseen_voices_and_digits(tmp_path):
    corpus, stage1, stage2 = tmp_path / 'corpus', tmp_path / 'stage1', tmp_path / 'stage2'
    build_corpus(str(corpus), UTTERANCES, seed=0, max_seconds=2.2, subsets=('digits',), jobs=2)
    train_tokenizer([str(corpus / 'train.jsonl')], 340, str(corpus / 'tok.model'), model_type='bpe')
    data = ['--tokenizer-model', corpus / 'tok.model', '--train-manifest', corpus / 'train.jsonl',
            '--valid-manifest', corpus / 'valid.jsonl']
    _run('megatron_salm_mtp.train', ['--config', os.path.join(ROOT, 'configs', 'asr_tiny_cpu_encoder.yaml'),
                                     '--save', stage1] + data)
    ctc = [r['ctc loss'] for r in _metrics(str(stage1), 'valid')]
    _run('megatron_salm_mtp.train', ['--config', os.path.join(ROOT, 'configs', 'asr_tiny_cpu.yaml'),
                                     '--load', stage1, '--finetune', '--save', stage2] + data)
    lm = [r['lm loss'] for r in _metrics(str(stage2), 'valid')]
    _run('megatron_salm_mtp.evaluate', ['--load', stage2, '--manifest', corpus / 'test_unseen.jsonl',
                                        '--audio-ablation', '--ctc-greedy', '--ctc-joint-weight', '0.3',
                                        '--batch-size', '16',
                                        '--out', tmp_path / 'report.json'])
    report = json.loads((tmp_path / 'report.json').read_text())
    figures, heard, steered = (report['audio_ablation'], report['modes']['ctc_greedy'],
                               report['modes']['ctc_joint_0.3'])
    print(f'twin: CTC valid {ctc}, lm valid {lm}, test_unseen {json.dumps(figures)}, '
          f"CTC head alone: WER {heard['wer']:.3f} CER {heard['cer']:.3f}, "
          f"steered by it: WER {steered['wer']:.3f} CER {steered['cer']:.3f}")
    assert figures['utterances'] == UTTERANCES // 10 and report['skipped_utterances'] == 0
    assert ctc[-1] < 0.75 * ctc[0], ctc  # stage 1 left the blank plateau (measured 2.81 -> 1.55)
    assert figures['wer'] <= WER_BOUND, figures
    assert figures['wer_silence'] >= figures['wer'] + SILENCE_GAP, figures
    assert figures['cer_silence'] >= figures['cer'] + SILENCE_GAP, figures
    assert heard['utterances'] == UTTERANCES // 10 and heard['cer'] <= CTC_CER_BOUND, heard
    assert steered['wer'] <= figures['wer'] + JOINT_WER_MARGIN, (steered, figures)
