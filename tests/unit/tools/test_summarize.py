"""``python -m megatron_salm_mtp.summarize``: the quickstart's closing table and loss-curve PNG."""

import json

import pytest

from megatron_salm_mtp import summarize

REPORT = {'modes': {
    'greedy': {'utterances': 48, 'wer': 0.3125, 'tokens_per_trunk_forward': 1.0, 'verify_forwards': 500},
    'speculative': {'utterances': 48, 'wer': 0.3125, 'tokens_per_trunk_forward': 2.4567,
                    'acceptance_per_depth': [0.9, 0.75, None]}}}
RECORDS = [{'split': 'train', 'iteration': 10, 'lm loss': 4.0, 'mtp_1 loss': 4.5, 'mtp_1 acc': 0.1, 'lr': 1e-3},
           {'split': 'train', 'iteration': 20, 'lm loss': 2.0, 'mtp_1 loss': 3.0, 'mtp_1 acc': 0.3, 'lr': 1e-3},
           {'split': 'valid', 'iteration': 20, 'lm loss': 2.5, 'mtp_1 loss': 3.5}]


def test_table_has_one_row_per_mode():
    assert summarize.summary_table(REPORT).splitlines() == [
        'mode         utterances  WER    tokens/trunk forward  accept d1  accept d2  accept d3',
        'greedy       48          31.2%  1.00                  -          -          -',
        'speculative  48          31.2%  2.46                  90.0%      75.0%      -']


def test_loss_series_per_split_and_depth():
    assert summarize.loss_series(RECORDS) == {'train lm loss': ([10, 20], [4.0, 2.0]),
                                              'train mtp_1 loss': ([10, 20], [4.5, 3.0]),
                                              'valid lm loss': ([20], [2.5]), 'valid mtp_1 loss': ([20], [3.5])}


def test_cli_prints_the_table_and_draws_the_curves(tmp_path, capsys):
    image = pytest.importorskip('matplotlib.image')
    (tmp_path / 'report.json').write_text(json.dumps(REPORT))
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in RECORDS))
    png = tmp_path / 'loss.png'
    summarize.main(['--report', str(tmp_path / 'report.json'), '--metrics', str(tmp_path / 'metrics.jsonl'),
                    '--loss-plot', str(png)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('mode') and out[3] == 'training: lm loss 4.000 at iteration 10 -> 2.000 at iteration 20'
    assert out[4] == f'loss curves: {png}'
    pixels = image.imread(str(png))  # a real PNG, 6 x 4 inches at 120 dpi
    assert pixels.shape[:2] == (480, 720) and pixels.std() > 0
