"""--overlap-param-gather (distributed optimizer, DP=2, CPU/gloo): a rank's parameters outside its
optimizer shard are gathered during the next forward, so checkpoints and evaluation must gather
them first. The checkpoint saved at iteration 2 is loaded without optimizer state at DP=1: its
iteration-3 loss must equal the DP=2 run's (stale weights would not), and resuming at DP=2
continues the uninterrupted run bitwise."""

import os

import pytest

from tests.support.data_fixtures import make_train_valid_corpus
from tests.support.train_utils import read_metrics, run_train

OVERLAP = ['--use-distributed-optimizer', '--overlap-grad-reduce', '--overlap-param-gather']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp('overlap')
    corpus = make_train_valid_corpus(work / 'corpus', n=24)
    ck = str(work / 'ck')
    common = ['--log-interval', '1', '--seed', '3', '--mtp-num-layers', '1']
    logs = {name: str(work / name) for name in ('full', 'resumed', 'weights_only')}
    run_train(corpus, common + OVERLAP + ['--train-iters', '4', '--save', ck, '--save-interval', '2',
                                          '--log-dir', logs['full']], nproc=2)
    with open(os.path.join(ck, 'latest_checkpointed_iteration.txt'), 'w') as f:
        f.write('2\n')
    run_train(corpus, common + OVERLAP + ['--train-iters', '4', '--load', ck, '--log-dir', logs['resumed']],
              nproc=2)
    run_train(corpus, common + ['--train-iters', '3', '--load', ck, '--no-load-optim',
                                '--log-dir', logs['weights_only']], nproc=1)
    return {name: {r['iteration']: r for r in read_metrics(path)} for name, path in logs.items()}


def test_checkpoint_holds_the_gathered_weights(runs):
    expected, actual = runs['full'][3]['lm loss'], runs['weights_only'][3]['lm loss']
    assert abs(actual - expected) <= 1e-5 * abs(expected), (expected, actual)


def test_resume_continues_the_uninterrupted_run(runs):
    for it in (3, 4):
        for key in ('lm loss', 'mtp_1 loss'):
            assert runs['resumed'][it][key] == runs['full'][it][key], (it, key)
