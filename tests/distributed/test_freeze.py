"""Training modes: frozen parameters stay bitwise unchanged and get no optimizer state; the
trainable ones change. PP=2 puts the MTP heads on the last stage only, so in head_only the first
stage trains nothing at all."""

import subprocess
import sys

import pytest
import torch

from megatron_salm_mtp.config import TRAINING_MODES, ConfigError
from megatron_salm_mtp.model.freeze import check_optimizer_state_covers, is_trainable
from tests.support.process import child_env, free_port, support_script

HARNESS = support_script('freeze_harness.py')


def test_mode_rules():
    assert is_trainable('language_model.decoder.layers.0.mlp.linear_fc1.weight', 'joint')
    assert not is_trainable('language_model.decoder.layers.0.mlp.linear_fc1.weight', 'head_only')
    assert not is_trainable('audio_encoder.conv1.weight', 'head_only')
    assert is_trainable('language_model.mtp.layers.1.eh_proj.weight', 'head_only')
    assert is_trainable('audio_projector.mlp.encoder.linear_fc1.weight', 'freeze_llm')
    assert not is_trainable('language_model.embedding.word_embeddings.weight', 'freeze_llm')
    assert is_trainable('ctc_head.weight', 'encoder_ctc') and is_trainable('audio_encoder.conv1.weight', 'encoder_ctc')
    assert not is_trainable('audio_projector.mlp.encoder.linear_fc1.weight', 'encoder_ctc')
    assert not is_trainable('language_model.decoder.layers.0.mlp.linear_fc1.weight', 'encoder_ctc')
    for mode in TRAINING_MODES:  # every choice of the flag has its rule
        is_trainable('x', mode)
    with pytest.raises(ValueError, match='--training-mode'):
        is_trainable('x', 'lora')


def test_optimizer_state_of_a_mode_that_trained_less_is_refused():
    check_optimizer_state_covers('ck', 'joint', 'encoder_ctc')
    check_optimizer_state_covers('ck', 'freeze_llm', 'head_only')
    check_optimizer_state_covers('ck', 'encoder_ctc', 'encoder_ctc')
    with pytest.raises(ConfigError, match='ck: saved by a --training-mode encoder_ctc run, .* add --finetune'):
        check_optimizer_state_covers('ck', 'encoder_ctc', 'joint')
    with pytest.raises(ConfigError, match='less than --training-mode freeze_llm trains'):
        check_optimizer_state_covers('ck', 'head_only', 'freeze_llm')


def test_frozen_params_do_not_change(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2',
           f'--master-port={free_port()}', HARNESS, '--modes', 'head_only,freeze_llm', '--pp', '2',
           '--out', str(tmp_path)]
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    for mode in ('head_only', 'freeze_llm'):
        seen_trainable = 0
        for records in ranks:
            for name, rec in records[mode].items():
                trainable = is_trainable(name, mode)
                assert rec['requires_grad'] == trainable, (mode, name)
                assert rec['in_optimizer'] == trainable, (mode, name)
                if trainable:
                    seen_trainable += 1
                    assert rec['changed'], (mode, name)
                else:
                    assert not rec['changed'], (mode, name)
        assert seen_trainable > 0, mode
    # head_only trains the MTP heads and nothing else, on the last stage only
    assert not any(r['requires_grad'] for r in ranks[0]['head_only'].values())
