"""Resume through ``python -m megatron_salm_mtp.train --load`` end to end (CPU, gloo, fp32).

One TP=2 x PP=2 run trains 6 iterations and saves at 3 and 6. Rolling the tracker back to 3 (as a
user would after a crash), a second run at the same layout resumes from 3: its lm and MTP losses
at iterations 4-6 equal the uninterrupted run's bitwise. A third run at TP=1 x PP=1 resumes from the same
checkpoint: the loss at iteration 4 agrees to 1e-5 (another layout sums in another order).
"""

import os

import pytest

from tests.support.data_fixtures import make_train_valid_corpus
from tests.support.train_utils import read_metrics, run_train

# The padded vocabulary must not depend on TP for a checkpoint to move between TP sizes:
# the byte tokenizer's 272 entries pad to 272 at TP=1 and TP=2 with a multiple of 8.
LAYOUT_FREE_VOCAB = ['--make-vocab-size-divisible-by', '8']
BIG = ['--tensor-model-parallel-size', '2', '--pipeline-model-parallel-size', '2']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp('resume')
    corpus = make_train_valid_corpus(work / 'corpus', n=24)
    ck = str(work / 'ck')
    common = LAYOUT_FREE_VOCAB + ['--log-interval', '1', '--seed', '7']
    logs = {name: str(work / name) for name in ('full', 'resumed', 'resharded')}
    run_train(corpus, common + BIG + ['--train-iters', '6', '--save', ck, '--save-interval', '3',
                                      '--log-dir', logs['full']], nproc=4)
    saved = sorted(os.listdir(ck))
    with open(os.path.join(ck, 'latest_checkpointed_iteration.txt'), 'w') as f:
        f.write('3\n')  # roll back: resume from iteration 3
    resumed = run_train(corpus, common + BIG + ['--train-iters', '6', '--load', ck,
                                                '--log-dir', logs['resumed']], nproc=4)
    resharded = run_train(corpus, common + ['--train-iters', '4', '--load', ck,
                                            '--log-dir', logs['resharded']], nproc=1)
    return {name: {r['iteration']: r for r in read_metrics(path)} for name, path in logs.items()}, \
        saved, resumed.stdout + resumed.stderr, resharded.stdout + resharded.stderr


def test_resume_continues_the_uninterrupted_run(runs):
    metrics, saved, resumed_log, _ = runs
    assert {'iter_0000003', 'iter_0000006', 'latest_checkpointed_iteration.txt'} <= set(saved), saved
    full, resumed = metrics['full'], metrics['resumed']
    assert sorted(full) == list(range(1, 7)) and sorted(resumed) == [4, 5, 6]
    assert 'resumed from' in resumed_log and 'at iteration 3' in resumed_log
    for it in (4, 5, 6):
        for key in ('lm loss', 'mtp_1 loss', 'mtp_2 loss'):
            assert resumed[it][key] == full[it][key], (it, key)  # same layout: bitwise
        assert resumed[it]['consumed_samples'] == full[it]['consumed_samples']
        assert resumed[it]['lr'] == full[it]['lr']


def test_resume_at_another_layout(runs):
    metrics, _, _, resharded_log = runs
    full, resharded = metrics['full'], metrics['resharded']
    assert sorted(resharded) == [4]
    assert 'RNG states are not restored' in resharded_log
    expected, actual = full[4]['lm loss'], resharded[4]['lm loss']
    assert abs(actual - expected) <= 1e-5 * abs(expected), (expected, actual)
    assert resharded[4]['lr'] == full[4]['lr']


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope='module')
def weights_only(tmp_path_factory):
    """Two runs of 2 iterations alike but for --no-save-optim, each resumed with --no-load-optim for
    a third; and the weights-only checkpoint resumed without it."""
    work = tmp_path_factory.mktemp('no_save_optim')
    corpus = make_train_valid_corpus(work / 'corpus', n=16)
    common = ['--log-interval', '1', '--seed', '7', '--lr-warmup-iters', '1', '--lr-decay-iters', '6']
    for name, flags in (('full', []), ('slim', ['--no-save-optim'])):
        run_train(corpus, common + flags + ['--train-iters', '2', '--save', str(work / name)])
        run_train(corpus, common + ['--train-iters', '3', '--load', str(work / name), '--no-load-optim',
                                    '--log-dir', str(work / f'{name}_resumed')])
    refused = run_train(corpus, common + ['--train-iters', '3', '--load', str(work / 'slim')], check=False)
    return work, refused


def test_no_save_optim_keeps_weights_position_and_rng_only(weights_only):
    work, _ = weights_only
    full, slim = (folder_bytes(work / name / 'iter_0000002') for name in ('full', 'slim'))
    assert slim < 0.5 * full, (slim, full)  # fp32 weights + Adam's two moments: about a third
    resumed = {name: {r['iteration']: r for r in read_metrics(str(work / f'{name}_resumed'))}
               for name in ('full', 'slim')}
    assert sorted(resumed['slim']) == [3]
    # The same weights, data position and RNG, each with a fresh optimizer: the same third step.
    assert resumed['slim'][3]['lm loss'] == resumed['full'][3]['lm loss']
    assert resumed['slim'][3]['consumed_samples'] == resumed['full'][3]['consumed_samples']


def test_resuming_a_weights_only_checkpoint_needs_no_load_optim(weights_only):
    _, refused = weights_only
    assert refused.returncode != 0
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if 'holds no optimizer state' in line]
    assert len(errors) == 1 and '--no-load-optim' in errors[0] and 'iter_0000002' in errors[0], errors
