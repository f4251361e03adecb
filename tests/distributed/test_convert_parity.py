"""Hugging Face -> SALM import: LLM logits and Whisper encoder outputs equal transformers' (fp32,
CPU) at TP=1 and TP=2, for Qwen3 (tied, QK-norm), Qwen2 (q/k/v bias) and Llama."""

import subprocess

import pytest
import torch

from tests.support.hf_fixtures import NUM_MELS, WHISPER_POSITIONS, hf_encoder, hf_logits
from tests.support.process import child_env, rank_launcher, support_script

HARNESS = support_script('convert_harness.py')
FAMILIES = ('qwen3', 'qwen2', 'llama')


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return {'tokens': torch.randint(0, 272, (2, 24), generator=gen),
            'features': torch.randn(2, NUM_MELS, 2 * WHISPER_POSITIONS, generator=gen)}


def run_harness(hf_models, tmp_path, nproc):
    inputs = _inputs()
    torch.save(inputs, tmp_path / 'inputs.pt')
    out = tmp_path / 'out.pt'
    launcher, rank_env = rank_launcher(nproc)
    cmd = launcher + [HARNESS,
                      '--llm', ','.join(hf_models[f] for f in FAMILIES), '--whisper', hf_models['whisper'],
                      '--inputs', str(tmp_path / 'inputs.pt'), '--out', str(out)]
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return inputs, torch.load(out)


@pytest.mark.parametrize('nproc', [1, 2], ids=['tp1', 'tp2'])
def test_logits_and_encoder_match_transformers(hf_models, tmp_path, nproc):
    inputs, ours = run_harness(hf_models, tmp_path, nproc)
    for family in FAMILIES:
        expected = hf_logits(hf_models[family], inputs['tokens'])
        got = ours[family]['logits']
        assert got.shape == expected.shape, family
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=family)
    expected = hf_encoder(hf_models['whisper'], inputs['features'])
    torch.testing.assert_close(ours['qwen3']['encoder'], expected, rtol=1e-4, atol=1e-4)
