"""An imported checkpoint trains: ``import-hf`` (new MTP head) -> ``train --load`` in head_only mode
-> ``export-hf``. The exported LLM still gives the original model's logits in transformers (the
import was loaded and the frozen LLM did not move), while the MTP head did train."""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.support.hf_fixtures import hf_logits
from tests.support.process import preimported_python, rank_launcher
from tests.support.train_utils import read_metrics

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


def _run(args, env=ENV):
    result = subprocess.run(preimported_python() + args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    from megatron_salm_mtp.tools.corpus.espeak import espeak_available
    from megatron_salm_mtp.tools.corpus.synth import build_corpus
    if not espeak_available():
        pytest.skip('espeak-ng unavailable')
    out = tmp_path_factory.mktemp('corpus')
    build_corpus(str(out), 12, seed=3, max_seconds=2.0)
    return str(out)


def test_imported_checkpoint_trains_head_only(hf_models, corpus, tmp_path):
    ckpt, run, export = str(tmp_path / 'imported'), str(tmp_path / 'run'), str(tmp_path / 'hf')
    _run(['-m', 'megatron_salm_mtp.convert', 'import-hf', '--llm', hf_models['qwen3'], '--out', ckpt,
          '--mtp-num-layers', '1'])
    _, rank_env = rank_launcher(1)
    _run(['-m', 'megatron_salm_mtp.train', '--config', os.path.join(ckpt, 'salm_model.yaml'),
          '--load', ckpt, '--save', run, '--training-mode', 'head_only',
          '--train-manifest', os.path.join(corpus, 'train.jsonl'), '--seq-length', '128',
          '--train-iters', '2', '--micro-batch-size', '4', '--global-batch-size', '4', '--lr', '1e-2',
          '--lr-warmup-iters', '0', '--log-interval', '1', '--eval-interval', '0', '--num-workers', '0'],
         env=dict(ENV, **rank_env))
    records = read_metrics(run)
    assert [r['iteration'] for r in records] == [1, 2]
    assert all('mtp_1 loss' in r for r in records), records[0].keys()
    _run(['-m', 'megatron_salm_mtp.convert', 'export-hf', '--load', run, '--out', export])
    tokens = torch.tensor([[5, 17, 99, 42, 7, 1, 2, 3]])
    torch.testing.assert_close(hf_logits(export, tokens), hf_logits(hf_models['qwen3'], tokens),
                               rtol=0, atol=0)
    eh = load_file(os.path.join(export, 'model.safetensors'))['model.layers.2.eh_proj.weight']
    assert not torch.equal(eh, torch.cat([torch.zeros(32, 32), torch.eye(32)], 1))  # the head trained
    assert json.load(open(os.path.join(export, 'config.json')))['num_nextn_predict_layers'] == 1
