"""Training with the CTC loss, SpecAugment and VTLP on: the CTC loss (per target id) falls with the LM
loss, and both logs - the training line, metrics.jsonl, validation - carry it (and the data wait)."""

import pytest

from megatron_salm_mtp.inference.loading import load_for_inference
from tests.support.train_utils import read_metrics, run_train


@pytest.fixture
def corpus(train_corpus):
    return train_corpus


def test_ctc_loss_falls_and_is_logged(corpus, tmp_path):
    log_dir, save = str(tmp_path / 'logs'), str(tmp_path / 'ckpt')
    result = run_train(corpus, ['--train-iters', '30', '--log-dir', log_dir, '--eval-interval', '30',
                                '--eval-iters', '1', '--ctc-loss-weight', '0.3', '--save', save,
                                '--spec-augment-freq-masks', '2', '--spec-augment-time-masks', '2',
                                '--vtlp-max-warp', '0.1'])
    assert 'ctc loss: ' in result.stdout and 'ctc infeasible: 0' in result.stdout
    assert 'data wait (ms): ' in result.stdout
    records = read_metrics(log_dir)
    assert all(0 <= r['data_wait_ms'] <= r['step_ms'] for r in records)
    first, last = records[0], records[-1]
    assert last['ctc loss'] < 0.5 * first['ctc loss'], (first['ctc loss'], last['ctc loss'])
    assert last['lm loss'] < 0.7 * first['lm loss'], (first['lm loss'], last['lm loss'])
    valid = read_metrics(log_dir, 'valid')
    assert valid and 0 < valid[-1]['ctc loss'] < first['ctc loss']
    # Decoding loads the checkpoint, CTC head included (the saved config builds it).
    loaded = load_for_inference(save)
    assert loaded.model.ctc_head is not None and loaded.iteration == 30


def test_intermediate_ctc_trains_both_layers_and_logs_them(corpus, tmp_path):
    """Stage 1 with InterCTC on the first encoder layer: both layers' CTC losses fall, each logged."""
    log_dir = str(tmp_path / 'logs')
    result = run_train(corpus, ['--train-iters', '30', '--log-dir', log_dir, '--eval-interval', '30',
                                '--eval-iters', '1', '--training-mode', 'encoder_ctc', '--ctc-loss-weight', '1',
                                '--ctc-target-units', 'characters', '--encoder-num-layers', '2',
                                '--ctc-intermediate-layer', '1', '--mtp-num-layers', '0'])
    assert any('iteration' in line and 'ctc intermediate loss: ' in line for line in result.stdout.splitlines())
    records = read_metrics(log_dir)
    first, last = records[0], records[-1]
    for name in ('ctc loss', 'ctc intermediate loss'):
        assert last[name] < 0.7 * first[name], (name, first[name], last[name])
    assert 'ctc intermediate loss' in read_metrics(log_dir, 'valid')[-1]
