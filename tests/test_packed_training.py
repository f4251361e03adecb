"""``--pack-sequences`` through ``python -m megatron_salm_mtp.train`` (CPU, gloo): the loss falls,
and batch sizes and consumed samples count packed rows."""

from train_utils import read_metrics, run_train


def test_packed_training_loss_falls(train_corpus, tmp_path):
    log_dir = str(tmp_path / 'logs')
    result = run_train(train_corpus, ['--pack-sequences', '--pack-window', '64', '--seq-length', '512',
                                      '--micro-batch-size', '1', '--global-batch-size', '2',
                                      '--train-iters', '30', '--log-dir', log_dir])
    assert 'iteration       30/      30' in result.stdout
    records = read_metrics(log_dir)
    first, last = records[0], records[-1]
    assert last['lm loss'] < 0.7 * first['lm loss'], (first['lm loss'], last['lm loss'])
    assert last['mtp_1 loss'] < first['mtp_1 loss']
    assert last['consumed_samples'] == 30 * 2  # rows
