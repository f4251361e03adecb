"""``convert import-hf`` -> ``generate`` -> ``convert export-hf`` end to end on a tiny Qwen3 +
Whisper pair, plus MTP attach / keep / depth-mismatch rules on the exported (DeepSeek-V3 named)
checkpoint.

One import (PP=2, two new MTP depths from the last layer) is read back at TP=2 by ``generate``
(resharded by dist_checkpointing) and at TP=1 by ``export-hf``.
"""

import json
import os
import re
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from megatron_salm_mtp.config import ConfigError
from tests.support.hf_fixtures import hf_logits
from tests.support.process import free_port, preimported_python

PROMPT = [5, 17, 99, 42, 7]
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


def _run(args, nproc=None, stderr=False):
    """stdout (with ``stderr``: stdout and stderr) of a command that succeeds."""
    launcher = preimported_python()
    if nproc:
        launcher += ['-m', 'torch.distributed.run', f'--nproc-per-node={nproc}',
                     f'--master-port={free_port()}']
    result = subprocess.run(launcher + args, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return (result.stdout, result.stderr) if stderr else result.stdout


@pytest.fixture(scope='module')
def imported(hf_models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('ckpt') / 'salm')
    stdout, stderr = _run(['-m', 'megatron_salm_mtp.convert', 'import-hf', '--llm', hf_models['qwen3'],
                           '--whisper', hf_models['whisper'], '--out', out,
                           '--pipeline-model-parallel-size', '2', '--mtp-num-layers', '2'], stderr=True)
    return out, stdout, stderr


def test_import_reports_mtp_initialisation(imported):
    _, stdout, _ = imported
    assert stdout.count('transformer layer copied from the last decoder layer') == 2
    assert 'eh_proj = [0 | I]' in stdout


def test_import_prints_progress(imported):
    """Rank 0 of the two (PP=2) prints its tensors done (at the end at least: the import is quick)."""
    _, _, stderr = imported
    lines = [line for line in stderr.splitlines() if line.startswith('import-hf')]
    assert len(lines) == 1 and re.fullmatch(r"import-hf \(rank 0's share\): (\d+)/\1 tensors \(100%\), "
                                            r"[\d.]+ tensors/s, done in 0:00:\d\d", lines[0]), lines


def test_generate_matches_transformers_greedy(imported, hf_models):
    import transformers as T
    out, _, _ = imported
    stdout = _run(['-m', 'megatron_salm_mtp.generate', '--load', out, '--prompt-ids',
                   ','.join(map(str, PROMPT)), '--max-new-tokens', '10', '--json'], nproc=2)
    ours = json.loads([line for line in stdout.splitlines() if line.startswith('{')][-1])
    model = T.AutoModelForCausalLM.from_pretrained(hf_models['qwen3']).eval()
    expected = model.generate(torch.tensor([PROMPT]), max_new_tokens=10, do_sample=False)[0, len(PROMPT):]
    assert ours['output_ids'] == expected.tolist()
    assert len(set(ours['output_ids'])) > 1  # a real sequence, not one repeated id


@pytest.fixture(scope='module')
def exported(imported, tmp_path_factory):
    ckpt, _, _ = imported
    out = str(tmp_path_factory.mktemp('export') / 'hf')
    _, stderr = _run(['-m', 'megatron_salm_mtp.convert', 'export-hf', '--load', ckpt, '--out', out], stderr=True)
    return out, stderr


def test_export_prints_progress(exported):
    """The one export process prints its tensors done (at the end at least: the export is quick)."""
    _, stderr = exported
    lines = [line for line in stderr.splitlines() if line.startswith('export-hf')]
    assert len(lines) == 1 and re.fullmatch(r'export-hf: (\d+)/\1 tensors \(100%\), [\d.]+ tensors/s, '
                                            r'done in 0:00:\d\d', lines[0]), lines


def test_export_loads_in_transformers_with_same_logits(exported, hf_models):
    exported, _ = exported
    tokens = torch.tensor([PROMPT * 3])
    torch.testing.assert_close(hf_logits(exported, tokens), hf_logits(hf_models['qwen3'], tokens),
                               rtol=1e-5, atol=1e-5)
    config = json.load(open(os.path.join(exported, 'config.json')))
    assert config['num_nextn_predict_layers'] == 2
    salm = json.load(open(os.path.join(exported, 'salm_config.json')))
    assert salm['audio_projector']['frame_stack'] == 4 and salm['llm']['mtp']['num_layers'] == 2


def test_export_holds_new_mtp_heads_and_encoder(exported, hf_models):
    exported, _ = exported
    weights = load_file(os.path.join(exported, 'model.safetensors'))
    hidden = 32
    for k in (2, 3):  # MTP depths after the 2 decoder layers, DeepSeek-V3 names
        eh = weights[f'model.layers.{k}.eh_proj.weight']
        torch.testing.assert_close(eh, torch.cat([torch.zeros(hidden, hidden), torch.eye(hidden)], 1))
        assert torch.equal(weights[f'model.layers.{k}.enorm.weight'], torch.ones(hidden))
        for part in ('self_attn.q_proj', 'self_attn.k_norm', 'mlp.gate_proj', 'mlp.down_proj'):
            assert torch.equal(weights[f'model.layers.{k}.{part}.weight'], weights[f'model.layers.1.{part}.weight'])
        assert torch.equal(weights[f'model.layers.{k}.shared_head.norm.weight'], weights['model.norm.weight'])
    original = load_file(os.path.join(hf_models['whisper'], 'model.safetensors'))
    encoder = load_file(os.path.join(exported, 'audio_encoder', 'model.safetensors'))
    for name, tensor in encoder.items():
        torch.testing.assert_close(tensor, original[name], rtol=0, atol=0, msg=name)
    assert load_file(os.path.join(exported, 'audio_projector.safetensors'))['linear_fc1.weight'].shape == (32, 128)


def test_shipped_heads_are_kept_and_depth_checked(exported):
    exported, _ = exported
    from megatron_salm_mtp.convert.hf_llm import llm_recipes
    from megatron_salm_mtp.convert.load import salm_config_from_hf
    from megatron_salm_mtp.convert.mtp_init import mtp_recipes
    from megatron_salm_mtp.convert.source import TensorSource
    cfg = salm_config_from_hf(exported)
    assert cfg.mtp_num_layers == 2  # found in the checkpoint
    src = TensorSource(exported)
    decoder = llm_recipes(cfg)
    recipes, report = mtp_recipes(src, cfg, decoder, 2, 'last_layer', False, False)
    assert all('loaded from the checkpoint (DeepSeek-V3' in line for line in report)
    eh = recipes['language_model.mtp.layers.1.eh_proj.weight']
    assert torch.equal(eh.full(src), src.get('model.layers.3.eh_proj.weight'))
    with pytest.raises(ConfigError, match='ships 2 MTP depth.*--mtp-extend-depth'):
        mtp_recipes(src, cfg, decoder, 3, 'last_layer', False, False)
    with pytest.raises(ConfigError, match='ships 2 MTP depth'):
        mtp_recipes(src, cfg, decoder, 1, 'last_layer', False, False)
    recipes, report = mtp_recipes(src, cfg, decoder, 3, 'last_layer', False, True)
    assert 'copy of shipped depth 2' in report[-1]
    assert torch.equal(recipes['language_model.mtp.layers.2.eh_proj.weight'].full(src), eh.full(src))
    recipes, report = mtp_recipes(src, cfg, decoder, 1, 'random', True, False)
    assert 'replaced' in report[0] and not recipes
