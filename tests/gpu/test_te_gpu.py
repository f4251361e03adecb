"""Runs te_check.py where two GPUs and Transformer Engine are present; skips elsewhere."""

import subprocess
import sys

import pytest
import torch

from tests.support.process import ROOT, child_env


def _te_importable():
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not _te_importable(),
                    reason='needs 2 GPUs and Transformer Engine')
def test_te_bf16_tp2_sp_matches_one_gpu(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'tests.gpu.te_check', '--out', str(tmp_path)], cwd=ROOT,
                            env=child_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
