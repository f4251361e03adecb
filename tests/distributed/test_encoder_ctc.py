"""``--training-mode encoder_ctc`` (stage 1: the audio encoder and its CTC head on the CTC loss
alone) and ``--finetune`` (stage 2: a joint run from its weights).

Gradients: the real SALM at TP=2 and at DP=2, with 1 and 2 microbatches, against the plain-torch
reference's sum CTC / N_ctc over the global batch (empty and unalignable targets left out); the
LLM, projector and MTP parameters get neither a gradient buffer nor optimizer state.
End to end: stage 1 lowers the CTC loss and logs it as its loss, and ``evaluate`` scores its
checkpoint by the CTC head alone (its LLM never trained); stage 2 starts at iteration 0
from exactly stage 1's weights, attaches MTP heads, and trains. An optional stage 0 trains the LLM
on text alone, and stage 1 from its weights keeps that LLM.
"""

import dataclasses
import json
import os
import subprocess

import pytest
import torch

from megatron_salm_mtp.checkpoint.attach import attaches_new_layer_mix
from megatron_salm_mtp.checkpoint.audio_parts import check_audio_parts
from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.data.manifest import write_manifest
from megatron_salm_mtp.inference.loading import load_for_inference
from megatron_salm_mtp.tools.corpus.text_manifest import DEFAULT_PROMPT, conversation
from megatron_salm_mtp.train import parse_and_validate
from tests.support.parallel_utils import init_weights, run_layout, speech_batch, tiny_config
from tests.support.process import CONFIGS, ROOT, preimported_python
from tests.support.reference import encoder_ctc_objective
from tests.support.train_utils import read_metrics, run_train

GLOBAL_BATCH = 8
RTOL = 2e-5  # fp32: relative to the largest entry of each gradient
TRAINED = ('audio_encoder.', 'ctc_head.')


def reference_setup(workdir: str, cfg):
    """The weights and batch written to ``workdir``, and the reference's loss, gradients and counts."""
    weights = init_weights(cfg, workdir)
    batch = speech_batch(cfg, GLOBAL_BATCH, seed=11)
    torch.save(batch, os.path.join(workdir, 'batch.pt'))
    leaves = {k: v.clone().requires_grad_(k.startswith(TRAINED) and not k.endswith('embed_positions'))
              for k, v in weights.items()}
    loss, (last_sum, n_ctc, infeasible, lower_sum) = encoder_ctc_objective(leaves, cfg, batch)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    per_id = {'ctc loss': (last_sum / n_ctc).item()}
    if lower_sum is not None:
        per_id['ctc intermediate loss'] = (lower_sum / n_ctc).item()
    return dict(cfg=cfg, workdir=workdir, loss=loss.item(), grads=grads, n_ctc=n_ctc, infeasible=infeasible,
                per_id=per_id)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    # The CTC weight (0.3) must not matter: the reference objective has none.
    return reference_setup(str(tmp_path_factory.mktemp('encoder_ctc')), tiny_config(mtp_num_layers=None,
                                                                                      ctc_loss_weight=0.3))


LAYOUTS = [(2, 2, 2), (1, 2, 1)]  # (tp, nproc, microbatches): TP=2 x 2 microbatches, DP=2 x 1


@pytest.mark.parametrize('tp,nproc,microbatches', LAYOUTS,
                         ids=[f'tp{t}-dp{n // t}-mb{m}' for t, n, m in LAYOUTS])
def test_gradients_match_the_reference_and_only_the_encoder_trains(setup, tp, nproc, microbatches):
    cfg, workdir = setup['cfg'].replace(tensor_model_parallel_size=tp), setup['workdir']
    loss, grads, _, ranks = run_layout(cfg, os.path.join(workdir, 'weights.pt'), os.path.join(workdir, 'batch.pt'),
                                       os.path.join(workdir, f'tp{tp}n{nproc}m{microbatches}'), nproc,
                                       microbatches, training_mode='encoder_ctc')
    assert setup['infeasible'] == 2 and setup['n_ctc'] > 0  # the batch exercises the exclusions
    assert loss == pytest.approx(setup['loss'], rel=1e-5)
    assert set(grads) == set(setup['grads']) and all(name.startswith(TRAINED) for name in grads)
    for name, expected in setup['grads'].items():
        scale = expected.abs().max().item()
        assert scale > 0, f'{name}: reference gradient is zero, the test would not see an error'
        err = (grads[name] - expected).abs().max().item() / scale
        assert err < RTOL, f'{name}: relative error {err:.2e}'
    for rank in ranks:
        state = rank['frozen_state']
        trained = sorted(name for name in state['all'] if name.startswith(TRAINED))
        assert state['grad_buffer'] == state['in_optimizer'] == trained
        assert any(name.startswith('language_model.') for name in state['all'])
        for name, value in setup['per_id'].items():
            assert rank['metrics'][name] == pytest.approx(value, rel=1e-5)
        assert rank['metrics']['ctc infeasible'] == setup['infeasible']


def test_intermediate_ctc_gradients_match_the_reference(tmp_path):
    """InterCTC on the first of two encoder layers, at TP=2 with 2 microbatches: the objective mixes
    both layers' CTC, the logs keep each layer's loss apart."""
    cfg = tiny_config(mtp_num_layers=None, ctc_loss_weight=0.3, encoder_num_layers=2, ctc_intermediate_layer=1,
                      ctc_intermediate_weight=0.4)
    setup = reference_setup(str(tmp_path), cfg)
    assert setup['per_id']['ctc intermediate loss'] != pytest.approx(setup['per_id']['ctc loss'], rel=1e-3)
    test_gradients_match_the_reference_and_only_the_encoder_trains(setup, 2, 2, 2)


def test_conformer_convolution_gradients_match_the_reference(tmp_path):
    """Conformer convolution modules of 5 frames in both encoder layers, at TP=2 with 2
    microbatches (their weights whole on each rank) and at DP=2: the reference runs the same
    branch in plain torch, padded frames zeroed before each depthwise convolution."""
    cfg = tiny_config(mtp_num_layers=None, ctc_loss_weight=0.3, encoder_num_layers=2, encoder_conv_kernel_size=5)
    setup = reference_setup(str(tmp_path), cfg)
    assert any('cross_attention.depthwise' in name for name in setup['grads'])
    for tp, nproc, microbatches in LAYOUTS:
        test_gradients_match_the_reference_and_only_the_encoder_trains(setup, tp, nproc, microbatches)


def test_good_flags_pass(tmp_path):
    manifest = tmp_path / 'train.jsonl'
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    run = parse_and_validate(['--train-manifest', str(manifest), '--training-mode', 'encoder_ctc',
                              '--ctc-loss-weight', '1', '--tensor-model-parallel-size', '2'])
    assert run.train.training_mode == 'encoder_ctc'
    run = parse_and_validate(['--train-manifest', str(manifest), '--load', str(tmp_path / 'stage1'),
                              '--finetune', '--save', str(tmp_path / 'stage2')])
    assert run.train.finetune


def test_a_ctc_head_of_other_units_or_none_is_refused_at_load():
    run = tiny_config(ctc_loss_weight=0.3, ctc_target_units='characters')
    check_audio_parts('ck', {'ctc_loss_weight': 1.0, 'ctc_target_units': 'characters'}, run)  # loads
    check_audio_parts('ck', {}, run)  # saved without its settings: nothing to compare
    with pytest.raises(ConfigError, match='ck: its CTC head emits tokens, this run has --ctc-target-units characters'):
        check_audio_parts('ck', {'ctc_loss_weight': 0.3, 'ctc_target_units': 'tokens'}, run)
    with pytest.raises(ConfigError, match=r'ck: saved without a CTC head, this run has one \(--ctc-loss-weight 0.3\)'):
        check_audio_parts('ck', {'ctc_loss_weight': 0.0, 'ctc_target_units': 'characters'}, run)


def test_other_convolution_modules_are_refused_at_load():
    saved = {'ctc_loss_weight': 0.0, 'encoder_num_layers': 2}
    plain = tiny_config()
    check_audio_parts('ck', saved, plain)  # settings saved before the field existed: a plain encoder
    check_audio_parts('ck', {'ctc_loss_weight': 0.0}, tiny_config(encoder_conv_kernel_size=5))
    with pytest.raises(ConfigError, match='ck: saved with --encoder-conv-kernel-size 15, this run has 0'):
        check_audio_parts('ck', {**saved, 'encoder_conv_kernel_size': 15}, plain)


def test_a_layer_mix_is_attached_only_without_optimizer_state_and_never_dropped():
    """(Attached without optimizer state: the stage-2 run below.)"""
    saved = {'encoder_num_layers': 2}
    plain, mixed = tiny_config(encoder_num_layers=2), tiny_config(encoder_num_layers=2, encoder_layer_mix=True)
    assert not attaches_new_layer_mix('ck', saved, plain, with_optimizer=True)
    assert not attaches_new_layer_mix('ck', {**saved, 'encoder_layer_mix': True}, mixed, with_optimizer=True)
    assert not attaches_new_layer_mix('ck', {}, mixed, with_optimizer=True)  # no model settings saved
    with pytest.raises(ConfigError, match='ck has no layer mix and this run has --encoder-layer-mix: add --no-load'):
        attaches_new_layer_mix('ck', saved, mixed, with_optimizer=True)
    with pytest.raises(ConfigError, match='ck: saved with --encoder-layer-mix, this run does not have it'):
        attaches_new_layer_mix('ck', {**saved, 'encoder_layer_mix': True}, plain, with_optimizer=False)


STAGES = [('asr_gpu_encoder.yaml', 'asr_gpu.yaml'), ('asr_tiny_cpu_encoder.yaml', 'asr_tiny_cpu.yaml')]


@pytest.mark.parametrize('stage1,stage2', STAGES, ids=[s for s, _ in STAGES])
def test_stage_one_configs_build_the_model_of_stage_two(tmp_path, stage1, stage2):
    """Stage 2 loads every tensor stage 1 saved: the two configs must build the same SALM."""
    manifest = tmp_path / 'train.jsonl'
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    common = ['--train-manifest', str(manifest), '--tokenizer-model', str(tmp_path), '--save-interval', '0']
    first = parse_and_validate(['--config', os.path.join(CONFIGS, stage1)] + common)
    second = parse_and_validate(['--config', os.path.join(CONFIGS, stage2), '--ctc-target-units',
                                 first.model.ctc_target_units] + common)
    assert first.train.training_mode == 'encoder_ctc' and second.model.ctc_enabled
    models = [{k: v for k, v in dataclasses.asdict(run.model).items() if k != 'ctc_loss_weight'}
              for run in (first, second)]
    assert models[0] == models[1]
    for name in ('tokenizer_type', 'prompt_template', 'max_duration'):  # the same utterances
        assert getattr(first.data, name) == getattr(second.data, name), name


def _weights(folder: str) -> dict:
    return {k: v.clone() for k, v in load_for_inference(folder).model.state_dict().items()
            if not k.endswith('_extra_state')}


def _command(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*preimported_python(), '-m', f'megatron_salm_mtp.{module}', *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _stage_one_is_scored_by_its_ctc_head(stage1: str, manifest: str, tmp_path) -> None:
    """Greedy decoding with an LLM at its initialisation would score noise: the report holds the
    CTC head's mode alone, and the flags (and the command) that decode with the LLM are one error
    line each."""
    out = tmp_path / 'stage1_report.json'
    result = _command('evaluate', '--load', stage1, '--manifest', manifest, '--batch-size', 4, '--max-utterances', 8,
                       '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['training_mode'] == 'encoder_ctc' and list(report['modes']) == ['ctc_greedy']
    figures = report['modes']['ctc_greedy']
    assert figures['utterances'] == 8 and 0 <= figures['cer'] and figures['step_tokens_per_s'] is None
    assert [sorted(h) for h in report['hypotheses']][0] == ['ctc_greedy', 'reference', 'split', 'subset', 'where']
    for flag in ('--speculative', '--audio-ablation'):
        refused = _command('evaluate', '--load', stage1, '--manifest', manifest, flag)
        errors = [line for line in refused.stderr.splitlines() if 'error: ' in line]
        assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
        assert f'{flag}: --load {stage1} is a stage-1 checkpoint (--training-mode encoder_ctc' in errors[0]
    with open(manifest) as f:
        audio = os.path.join(os.path.dirname(manifest), json.loads(f.readline())['audio_filepath'])
    refused = _command('transcribe', '--load', stage1, audio)
    errors = [line for line in refused.stderr.splitlines() if 'error: ' in line]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert f'--load {stage1}: a stage-1 checkpoint (--training-mode encoder_ctc) has an LLM that never' in errors[0]


def test_stage_one_then_finetune_with_mtp_heads(train_corpus, tmp_path):
    """Stage 2 also gives the projector a new mix of the encoder's two layers, which trains."""
    stage1, stage2 = str(tmp_path / 'stage1'), str(tmp_path / 'stage2')
    ctc = ['--ctc-loss-weight', '0.3', '--log-interval', '1', '--eval-iters', '1', '--encoder-num-layers', '2']
    first = run_train(train_corpus, ctc + ['--training-mode', 'encoder_ctc', '--mtp-num-layers', '0',
                                           '--train-iters', '16', '--eval-interval', '16', '--save', stage1])
    lines = [line for line in first.stdout.splitlines() if line.startswith('iteration')]
    assert len(lines) == 16 and all('ctc loss: ' in line and 'lm loss' not in line for line in lines)
    records, valid = read_metrics(stage1), read_metrics(stage1, 'valid')
    assert all('lm loss' not in r for r in records + valid)
    late = sum(r['ctc loss'] for r in records[-4:]) / 4  # ~9.5 against 23 at the first step
    assert late < 0.5 * records[0]['ctc loss'], (records[0]['ctc loss'], late)
    assert 0 < valid[-1]['ctc loss'] < records[0]['ctc loss']

    _stage_one_is_scored_by_its_ctc_head(stage1, os.path.join(train_corpus, 'test.jsonl'), tmp_path)

    resumed = run_train(train_corpus, ctc + ['--load', stage1, '--train-iters', '17'], check=False)
    errors = [line for line in resumed.stderr.splitlines() if line.startswith('error: ')]
    assert resumed.returncode != 0 and len(errors) == 1, resumed.stderr[-3000:]
    assert 'saved by a --training-mode encoder_ctc run, whose optimizer state holds less than ' \
           '--training-mode joint trains: add --finetune' in errors[0]
    second = run_train(train_corpus, ctc + ['--load', stage1, '--finetune', '--mtp-num-layers', '2',
                                            '--encoder-layer-mix', '--train-iters', '3', '--lr-warmup-iters', '1',
                                            '--eval-interval', '0', '--save', stage2, '--save-interval', '1'])
    log = second.stdout + second.stderr
    assert 'has no MTP layers: the 2 MTP depths of this run start from their initialisation' in log
    assert '(--finetune); training starts at iteration 0' in log
    assert 'has no layer mix: the --encoder-layer-mix weights of this run start equal' in log
    records = read_metrics(stage2)
    assert [r['iteration'] for r in records] == [1, 2, 3]
    assert records[0]['consumed_samples'] == 8  # the data from its start
    assert all(r['lm loss'] > 0 and r['mtp_2 loss'] > 0 and r['ctc loss'] > 0 for r in records)
    # The warm-up's first step has lr 0 (core's schedule starts at init_lr 0): iteration 1 holds
    # exactly the weights the run started from. Then everything trains.
    before = _weights(stage1)
    tracker = os.path.join(stage2, 'latest_checkpointed_iteration.txt')
    with open(tracker, 'w') as f:
        f.write('1\n')
    started = _weights(stage2)
    assert set(started) == set(before) | {k for k in started if k.startswith('language_model.mtp.')} | {
        'audio_projector.layer_weights'}
    assert torch.equal(started['audio_projector.layer_weights'], torch.zeros(2))
    for name, value in before.items():
        assert torch.equal(started[name], value), name
    with open(tracker, 'w') as f:
        f.write('3\n')
    trained = _weights(stage2)
    for prefix in ('audio_encoder.transformer', 'ctc_head.', 'audio_projector.', 'language_model.decoder',
                   'language_model.mtp.'):
        names = [k for k in trained if k.startswith(prefix) and 'norm' not in k]
        assert names and any(not torch.equal(trained[k], started[k]) for k in names), prefix
    assert trained['audio_projector.layer_weights'].abs().min() > 0


def test_the_text_config_builds_the_model_of_the_encoder_stage(tmp_path):
    """Stage 0 (the LLM on text, configs/asr_gpu_text.yaml) saves what the encoder stage loads."""
    manifest = tmp_path / 'train.jsonl'
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    common = ['--train-manifest', str(manifest), '--tokenizer-model', str(tmp_path), '--save-interval', '0']
    text, encoder = (parse_and_validate(['--config', os.path.join(CONFIGS, name)] + common)
                     for name in ('asr_gpu_text.yaml', 'asr_gpu_encoder.yaml'))
    assert text.train.training_mode == 'joint' and text.model.ctc_enabled
    assert ({k: v for k, v in dataclasses.asdict(text.model).items() if k != 'ctc_loss_weight'} ==
            {k: v for k, v in dataclasses.asdict(encoder.model).items() if k != 'ctc_loss_weight'})


def test_a_text_stage_then_stage_one_keeps_its_language_model(train_corpus, tmp_path):
    """Stage 0 trains the LLM on text-only conversations (the CTC head built, idle); stage 1 starts
    from its weights and trains the encoder, leaving the LLM exactly as stage 0 left it."""
    text_manifest = tmp_path / 'train_text.jsonl'
    with open(os.path.join(train_corpus, 'train.jsonl')) as f:
        texts = [json.loads(line)['text'] for line in f]
    write_manifest(str(text_manifest), [conversation(t, DEFAULT_PROMPT) for t in texts])
    stage0, stage1 = str(tmp_path / 'stage0'), str(tmp_path / 'stage1')
    ctc = ['--ctc-loss-weight', '0.3', '--ctc-target-units', 'characters', '--mtp-num-layers', '0']
    run_train(train_corpus, ctc + ['--train-manifest', str(text_manifest), '--train-iters', '12', '--save', stage0])
    records = read_metrics(stage0)
    assert records[-1]['lm loss'] < 0.8 * records[0]['lm loss']  # 5.61 -> 4.05 here
    assert all(r['ctc loss'] == 0 for r in records)  # no audio, no CTC
    run_train(train_corpus, ctc + ['--training-mode', 'encoder_ctc', '--load', stage0, '--finetune',
                                   '--train-iters', '4', '--save', stage1])
    text_stage, encoder_stage = _weights(stage0), _weights(stage1)
    assert set(text_stage) == set(encoder_stage)
    llm = [k for k in text_stage if k.startswith('language_model.')]
    assert llm and all(torch.equal(text_stage[k], encoder_stage[k]) for k in llm)
    encoder = [k for k in text_stage if k.startswith('audio_encoder.transformer') and 'norm' not in k]
    assert any(not torch.equal(text_stage[k], encoder_stage[k]) for k in encoder)
