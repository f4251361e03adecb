"""Distributed checkpoints (checkpoint/save_load.py) on the real Megatron-Core SALM under gloo.

Each launch runs a plan of operations (tests/support/ckpt_harness.py) in one layout; checkpoints written
by one layout are loaded by another:

- model, forward loss, optimizer state and scheduler round-trip bitwise in the same layout, and
  across TP=2 x PP=2 <-> TP=1 x PP=1 (weights bitwise, losses to 1e-6 relative, the next Adam step to fp32
  noise), with the plain and with the distributed optimizer (DP=2 -> PP=2);
- RNG states (python, numpy, torch, Megatron's tracker) per rank, and the common state;
- a crash after all shards are written but before the checkpoint is final, a folder without the
  completion marker and a tracker naming it are all ignored: the previous complete one loads.
"""

import os
import shutil

import pytest
import torch

from tests.support.checkpoints import assert_changed, assert_params, close_loss, full_params, last_stage, launch
from tests.support.parallel_utils import tiny_config


@pytest.fixture(scope='module')
def reshard(tmp_path_factory):
    """TP=2 x PP=2 saves at iteration 2; TP=1 x PP=1 loads it, steps, saves at 3, then crashes
    while saving 4; TP=2 x PP=2 loads 3 (past the crashed save and an unmarked folder). The
    projector mixes two encoder layers, so its mix weights (whole on each TP rank) go along."""
    work = str(tmp_path_factory.mktemp('ckpt_reshard'))
    ck1, ck2 = os.path.join(work, 'ck1'), os.path.join(work, 'ck2')
    small = tiny_config(encoder_num_layers=2, encoder_layer_mix=True)
    big = small.replace(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    a, _ = launch(work, 'a', big, [
        {'op': 'build'}, {'op': 'train', 'seeds': [1, 2]},
        {'op': 'save', 'dir': ck1, 'iteration': 2}, {'op': 'dump', 'name': 'saved'},
        {'op': 'forward', 'seed': 9, 'name': 'fwd'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'},
        {'op': 'build'}, {'op': 'perturb_rng'}, {'op': 'load', 'dir': ck1},
        {'op': 'dump', 'name': 'loaded'}, {'op': 'forward', 'seed': 9, 'name': 'fwd_loaded'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3b'}], nproc=4)
    b, b_err = launch(work, 'b', small, [
        {'op': 'build'}, {'op': 'load', 'dir': ck1}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'forward', 'seed': 9, 'name': 'fwd'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'},
        {'op': 'save', 'dir': ck2, 'iteration': 3},
        {'op': 'train', 'seeds': [4]}, {'op': 'dump', 'name': 'after4'},
        {'op': 'crash_save', 'dir': ck2, 'iteration': 4}], nproc=1, expect_rc=17)
    crashed = sorted(os.listdir(ck2))
    # A folder that looks like a checkpoint but was never marked complete, and a tracker naming it.
    shutil.copytree(os.path.join(ck2, 'iter_0000003'), os.path.join(ck2, 'iter_0000005'),
                    ignore=shutil.ignore_patterns('checkpoint_complete.json'))
    with open(os.path.join(ck2, 'latest_checkpointed_iteration.txt'), 'w') as f:
        f.write('5\n')
    c, _ = launch(work, 'c', big, [
        {'op': 'build'}, {'op': 'load', 'dir': ck2}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [4]}, {'op': 'dump', 'name': 'after4'},
        {'op': 'save', 'dir': ck2, 'iteration': 4}], nproc=4)
    return dict(a=a, b=b, c=c, b_err=b_err, crashed=crashed, ck1=ck1, ck2=ck2)


def test_same_layout_roundtrip_is_bitwise(reshard):
    a = reshard['a']
    assert_params(full_params(a, 'saved'), full_params(a, 'loaded'))
    assert full_params(a, 'saved')['audio_projector.layer_weights'].abs().min() > 0  # trained off their start
    assert_changed(full_params(a, 'saved'), full_params(a, 'after3'))
    assert_params(full_params(a, 'after3'), full_params(a, 'after3b'))
    assert last_stage(a)['fwd'] == last_stage(a)['fwd_loaded']
    losses = last_stage(a)['losses']
    assert losses[2] == losses[3]  # step 3 from the checkpoint = step 3 uninterrupted
    for r in a:
        for dump in ('loaded', 'after3b'):
            assert r[dump]['lr'] == r[dump.replace('b', '').replace('loaded', 'saved')]['lr']
        assert r['loaded']['adam_steps'] == [2.0] and r['after3b']['adam_steps'] == [3.0]
        assert r['loaded']['scheduler_steps'] == r['saved']['scheduler_steps'] == 8


def test_rng_and_common_state_roundtrip(reshard):
    a = reshard['a']
    trackers = set()
    for r in a:
        saved, loaded = r['saved']['rng'], r['loaded']['rng']
        assert saved['random'] == loaded['random']
        assert (saved['numpy'] == loaded['numpy']).all()
        assert torch.equal(saved['torch'], loaded['torch'])
        assert saved['tracker'].keys() == loaded['tracker'].keys() and saved['tracker']
        for key in saved['tracker']:
            assert torch.equal(saved['tracker'][key], loaded['tracker'][key]), key
        trackers.add(bytes(saved['tracker']['model-parallel-rng'].numpy()))
        iteration, common = r['load_result']
        assert iteration == 2
        assert common == {'consumed_samples': 8, 'skipped_iterations': 1,
                          'data': {'consumed_samples': 8, 'epoch': 0, 'seed': 7}}
    assert len(trackers) == 4, 'each (PP, TP) rank has its own model-parallel stream'
    assert 'RNG states are not restored' in reshard['b_err']  # TP2xPP2 -> TP1xPP1


def test_tp2_pp2_to_tp1_pp1(reshard):
    a, b = reshard['a'], reshard['b']
    assert_params(full_params(a, 'saved'), full_params(b, 'loaded'))
    assert close_loss(last_stage(a)['fwd'], b[0]['fwd'])
    assert b[0]['load_result'][0] == 2
    assert b[0]['loaded']['adam_steps'] == [2.0] and b[0]['loaded']['lr'] == a[0]['saved']['lr']
    # Optimizer state came across the reshard: the next step matches the uninterrupted run.
    assert_params(full_params(a, 'after3'), full_params(b, 'after3'), exact=False)
    assert close_loss(last_stage(a)['losses'][2], b[0]['losses'][0])


def test_tp1_pp1_to_tp2_pp2(reshard):
    b, c = reshard['b'], reshard['c']
    assert all(r['load_result'][0] == 3 for r in c)
    assert_params(full_params(b, 'after3'), full_params(c, 'loaded'))
    assert_params(full_params(b, 'after4'), full_params(c, 'after4'), exact=False)
    assert close_loss(b[0]['losses'][1], last_stage(c)['losses'][0])
    assert all(r['after4']['adam_steps'] == [4.0] for r in c)


def test_crash_mid_save_is_never_taken_for_complete(reshard):
    from megatron_salm_mtp.checkpoint.layout import latest_checkpoint_iteration
    crashed = reshard['crashed']
    assert [n for n in crashed if n.startswith('iter_0000004.tmp-')], crashed
    assert 'iter_0000004' not in crashed
    assert open(os.path.join(reshard['ck2'], 'latest_checkpointed_iteration.txt')).read() == '4\n'
    after = sorted(os.listdir(reshard['ck2']))  # the later save cleaned the crashed one up
    assert after == ['iter_0000003', 'iter_0000004', 'iter_0000005',
                     'latest_checkpointed_iteration.txt'], after
    assert latest_checkpoint_iteration(reshard['ck2']) == 4
    with open(os.path.join(reshard['ck2'], 'iter_0000004', 'config.yaml')) as f:
        assert 'tensor_model_parallel_size: 2' in f.read()


@pytest.fixture(scope='module')
def distributed_optimizer(tmp_path_factory):
    """The distributed optimizer, saved at DP=2 in both formats: fully_reshardable (ck) loaded at
    DP=2 and at PP=2 (DP=1); dp_reshardable (the default, ck_dp) loaded at DP=2, at DP=1 and
    refused at PP=2."""
    work = str(tmp_path_factory.mktemp('ckpt_distopt'))
    ck, ck_dp = os.path.join(work, 'ck'), os.path.join(work, 'ck_dp')
    d, _ = launch(work, 'd', tiny_config(), [
        {'op': 'build'}, {'op': 'train', 'seeds': [1, 2]},
        {'op': 'save', 'dir': ck, 'iteration': 2, 'sharding': 'fully_reshardable'},
        {'op': 'save', 'dir': ck_dp, 'iteration': 2}, {'op': 'dump', 'name': 'saved'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'},
        {'op': 'build'}, {'op': 'load', 'dir': ck}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3b'},
        {'op': 'build'}, {'op': 'load', 'dir': ck_dp}, {'op': 'dump', 'name': 'loaded_dp'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3_dp'}], nproc=2, dist_opt=True)
    e, _ = launch(work, 'e', tiny_config(pipeline_model_parallel_size=2), [
        {'op': 'build'}, {'op': 'load', 'dir': ck, 'load_optimizer': False, 'name': 'model_only_result'},
        {'op': 'dump', 'name': 'model_only'}, {'op': 'load', 'dir': ck}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'},
        {'op': 'build'}, {'op': 'load_refused', 'dir': ck_dp, 'name': 'dp_refused'}], nproc=2, dist_opt=True)
    f, _ = launch(work, 'f', tiny_config(), [
        {'op': 'build'}, {'op': 'load', 'dir': ck_dp}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'}], nproc=1, dist_opt=True)
    return d, e, f, ck_dp


def test_dp_reshardable_optimizer_state(distributed_optimizer):
    """The default format: bitwise at the same layout, across a DP change, refused across PP."""
    d, e, f, ck_dp = distributed_optimizer
    assert_params(full_params(d, 'saved'), full_params(d, 'loaded_dp'))
    assert_params(full_params(d, 'after3'), full_params(d, 'after3_dp'))
    assert d[0]['losses'][2] == d[0]['losses'][4]
    assert_params(full_params(d, 'saved'), full_params(f, 'loaded'))
    assert_params(full_params(d, 'after3'), full_params(f, 'after3'), exact=False)  # DP=2 -> DP=1
    assert f[0]['after3']['adam_steps'] == [3.0]
    message = e[0]['dp_refused']
    assert message == (f'{ck_dp}/iter_0000002: its optimizer state was saved dp_reshardable at TP=1 PP=1 '
                       'and loads only there (this run: TP=1 PP=2); add --no-load-optim to load the weights '
                       'only, or save with --dist-ckpt-optim-fully-reshardable to move optimizer state '
                       'across layouts'), message


def test_distributed_optimizer_roundtrip(distributed_optimizer):
    d, e, _, _ = distributed_optimizer
    assert_params(full_params(d, 'saved'), full_params(d, 'loaded'))
    assert_changed(full_params(d, 'saved'), full_params(d, 'after3'))
    assert_params(full_params(d, 'after3'), full_params(d, 'after3b'))
    assert d[0]['losses'][2] == d[0]['losses'][3]
    # Weights only (--no-load-optim style): optimizer and scheduler stay fresh.
    assert_params(full_params(d, 'saved'), full_params(e, 'model_only'))
    assert all(r['model_only']['adam_steps'] == [] and r['model_only']['scheduler_steps'] == 0 for r in e)
    assert e[0]['model_only_result'][0] == 2
    # DP=2 -> PP=2: the sharded Adam state is regathered for the new buffers.
    assert_params(full_params(d, 'saved'), full_params(e, 'loaded'))
    assert_params(full_params(d, 'after3'), full_params(e, 'after3'), exact=False)
    assert close_loss(d[0]['losses'][2], last_stage(e)['losses'][0])
    assert all(r['after3']['adam_steps'] == [3.0] for r in e)


# ----------------------------------------------------------------- the folder logic, no processes

def _fake_checkpoint(root, iteration, complete=True):
    from megatron_salm_mtp.checkpoint import layout
    path = layout.checkpoint_dir(root, iteration)
    os.makedirs(path)
    if complete:
        open(os.path.join(path, layout.MARKER), 'w').close()
    return path


def test_latest_iteration_follows_tracker_and_skips_incomplete(tmp_path):
    from megatron_salm_mtp.checkpoint.layout import TRACKER, latest_checkpoint_iteration
    root = str(tmp_path)
    assert latest_checkpoint_iteration(os.path.join(root, 'missing')) is None
    assert latest_checkpoint_iteration(root) is None
    _fake_checkpoint(root, 10)
    _fake_checkpoint(root, 20)
    os.makedirs(os.path.join(root, 'iter_0000030.tmp-abcd'))  # crashed while writing
    _fake_checkpoint(root, 40, complete=False)                 # crashed before the marker
    assert latest_checkpoint_iteration(root) == 20              # no tracker: newest complete
    tracker = os.path.join(root, TRACKER)
    for text, expected in (('10\n', 10), ('40\n', 20), ('30', 20), ('garbage', 20), ('', 20)):
        with open(tracker, 'w') as f:
            f.write(text)
        assert latest_checkpoint_iteration(root) == expected, text


def test_another_tokenizer_is_refused():
    from megatron_salm_mtp.checkpoint.save_load import _check_vocabulary
    with pytest.raises(ValueError, match='vocabulary of 264 tokens, the model has 272'):
        _check_vocabulary({'vocab_size': 264, 'padded_vocab_size': 288},
                          {'vocab_size': 272, 'padded_vocab_size': 288}, 'ck/iter_0000002')


def test_load_errors_and_empty_folder(tmp_path):
    from megatron_salm_mtp.checkpoint.save_load import load_checkpoint
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        load_checkpoint(missing, [], None, None)
    os.makedirs(tmp_path / 'empty' / 'iter_0000007.tmp-1')
    assert load_checkpoint(str(tmp_path / 'empty'), [], None, None) is None
