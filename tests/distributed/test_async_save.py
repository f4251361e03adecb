"""``--async-save`` and the fully parallel save/load strategies (checkpoint/save_strategies.py), CPU, gloo.

- In one process group (tests/support/ckpt_harness.py, DP=2 with the distributed optimizer): an async
  save is not a checkpoint until it is finalized (no marker, the tracker still names the previous
  one), the step taken while it writes does not leak into it (the loaded weights are those at
  the save), and the run resumed from it repeats the next step's loss bitwise.
- Through ``python -m megatron_salm_mtp.train`` at DP=2: an async run leaves its last checkpoint
  complete at exit (finalized before the ranks leave), and a run resumed from its mid-run
  checkpoint logs the uninterrupted run's losses bitwise, as one resumed from a synchronous save does.
"""

import os
import subprocess

import pytest

from tests.support.checkpoints import assert_changed, assert_params, full_params, launch
from tests.support.data_fixtures import make_train_valid_corpus
from tests.support.parallel_utils import tiny_config
from tests.support.process import child_env, preimported_python, support_script
from tests.support.train_utils import read_metrics, run_train


@pytest.fixture(scope='module')
def harness_runs(tmp_path_factory):
    work = str(tmp_path_factory.mktemp('async_harness'))
    ck = os.path.join(work, 'ck')
    ranks, _ = launch(work, 'a', tiny_config(), [
        {'op': 'build'}, {'op': 'train', 'seeds': [1]},
        {'op': 'async_save', 'dir': ck, 'iteration': 1, 'name': 'first_scheduled'},
        {'op': 'finalize', 'dir': ck, 'iteration': 1, 'name': 'first_finalized'},
        {'op': 'train', 'seeds': [2]}, {'op': 'dump', 'name': 'saved'},
        {'op': 'async_save', 'dir': ck, 'iteration': 2, 'name': 'scheduled'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'},
        {'op': 'finalize', 'dir': ck, 'iteration': 2, 'name': 'finalized'},
        {'op': 'build'}, {'op': 'load', 'dir': ck}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [3]}], nproc=2, dist_opt=True)
    return ranks


def test_async_save_counts_only_once_finalized(harness_runs):
    for rank in harness_runs:
        assert rank['first_scheduled'] == {'complete': False, 'latest': None, 'in_flight': 1}
        assert rank['first_finalized'] == {'complete': True, 'latest': 1, 'in_flight': 0}
        # Until the second save is finalized, the tracker names the first.
        assert rank['scheduled'] == {'complete': False, 'latest': 1, 'in_flight': 1}
        assert rank['finalized'] == {'complete': True, 'latest': 2, 'in_flight': 0}


def test_async_save_holds_the_weights_at_the_save(harness_runs):
    assert_changed(full_params(harness_runs, 'saved'), full_params(harness_runs, 'after3'))
    assert_params(full_params(harness_runs, 'saved'), full_params(harness_runs, 'loaded'))
    losses = harness_runs[0]['losses']
    assert losses[2] == losses[3]  # step 3 after the resume repeats step 3 of the run


@pytest.fixture(scope='module')
def trainer_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp('async_train')
    corpus = make_train_valid_corpus(work / 'corpus', n=16)
    common = ['--log-interval', '1', '--seed', '7', '--train-iters', '4']
    logs = {name: str(work / name) for name in ('async', 'resumed')}
    saving = common + ['--save-interval', '2']
    run_train(corpus, saving + ['--save', str(work / 'ck_async'), '--async-save', '--log-dir', logs['async']],
              nproc=2)
    saved = sorted(os.listdir(work / 'ck_async'))
    final_marker = os.path.isfile(work / 'ck_async' / 'iter_0000004' / 'checkpoint_complete.json')
    (work / 'ck_async' / 'latest_checkpointed_iteration.txt').write_text('2\n')  # resume from 2
    run_train(corpus, common + ['--load', str(work / 'ck_async'), '--log-dir', logs['resumed']], nproc=2)
    metrics = {name: {r['iteration']: r for r in read_metrics(path)} for name, path in logs.items()}
    return metrics, saved, final_marker


def test_async_training_saves_and_resumes_like_sync(trainer_runs):
    metrics, saved, final_marker = trainer_runs
    # Finalized before exit: both checkpoints complete, the tracker on the last, no .tmp- left.
    assert [n for n in saved if n.startswith('iter_')] == ['iter_0000002', 'iter_0000004'], saved
    assert 'latest_checkpointed_iteration.txt' in saved and final_marker
    async_, resumed = metrics['async'], metrics['resumed']
    assert sorted(async_) == [1, 2, 3, 4] and sorted(resumed) == [3, 4]
    for it in (3, 4):  # what a resume from a synchronous save gives (tests/distributed/test_checkpoint_resume.py)
        for key in ('lm loss', 'mtp_1 loss'):
            assert resumed[it][key] == async_[it][key], (it, key)


def test_a_failed_background_write_is_one_line_naming_the_checkpoint(tmp_path):
    folder = tmp_path / 'iter_0000001'
    done = subprocess.run(preimported_python() + [support_script('failing_async_write.py'), str(folder)],
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    # Only torch's own import warnings (core 0.19's writer process logs one on a CPU) may precede it.
    lines = done.stderr.strip().splitlines()
    assert 'Traceback' not in done.stderr and [line for line in lines if line.startswith('error:')] == lines[-1:]
    assert lines[-1].startswith(f'error: writing checkpoint {folder} in the background failed: rank 0: ')
