"""A run in a few lines: ``python -m megatron_salm_mtp.summarize --report R [--metrics M --loss-plot P]``.

Prints, from an ``evaluate`` report, one row per decoding mode: WER, tokens emitted per trunk
forward and (speculative) acceptance per MTP depth; with ``--metrics`` (a training run's
metrics.jsonl) also the first and last logged training loss, and ``--loss-plot`` draws the loss
curves (lm loss and each MTP depth's, training and validation) into a PNG. What the quickstart
ends with. Tokens per trunk forward, not a speed-up: on a CPU the latter means nothing.
"""

import argparse
import json
import sys


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _percent(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f}%'


def summary_table(report: dict) -> str:
    """One row per decoding mode of an ``evaluate`` report."""
    modes = report['modes']
    depths = max((len(m.get('acceptance_per_depth', [])) for m in modes.values()), default=0)
    header = ['mode', 'utterances', 'WER', 'tokens/trunk forward'] + [f'accept d{d}' for d in range(1, depths + 1)]
    rows = [header]
    for name, figures in modes.items():
        per_token = figures.get('tokens_per_trunk_forward')
        accepted = figures.get('acceptance_per_depth', [])
        rows.append([name, str(figures['utterances']), _percent(figures['wer']),
                     '-' if per_token is None else f'{per_token:.2f}']
                    + [_percent(accepted[d]) if d < len(accepted) else '-' for d in range(depths)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def loss_series(records: list[dict]) -> dict[str, tuple]:
    """'train lm loss', 'train mtp_1 loss', ..., 'valid lm loss' -> (iterations, values)."""
    series = {}
    for record in records:
        for key, value in record.items():
            if key.endswith(' loss') and isinstance(value, (int, float)):
                steps, values = series.setdefault(f"{record['split']} {key}", ([], []))
                steps.append(record['iteration'])
                values.append(value)
    return series


def plot_losses(records: list[dict], path: str) -> str:
    """The loss curves as a PNG (matplotlib, the ``plots`` extra)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --loss-plot needs matplotlib: pip install 'megatron_salm_mtp[plots]'") from None
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, (steps, values) in loss_series(records).items():
        axis.plot(steps, values, marker='o' if label.startswith('valid') else None, label=label)
    axis.set(xlabel='iteration', ylabel='loss (per token)', yscale='log', title='training')
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def training_line(records: list[dict]) -> str:
    train = [r for r in records if r['split'] == 'train']
    if not train:
        return 'training: no logged step'
    first, last = train[0], train[-1]
    return (f"training: lm loss {first['lm loss']:.3f} at iteration {first['iteration']} -> "
            f"{last['lm loss']:.3f} at iteration {last['iteration']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.summarize', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--report', required=True, help="evaluate's JSON report")
    parser.add_argument('--metrics', help="the training run's metrics.jsonl")
    parser.add_argument('--loss-plot', help='PNG to draw the loss curves into (needs --metrics)')
    args = parser.parse_args(argv)
    if args.loss_plot and not args.metrics:
        parser.error('--loss-plot needs --metrics')
    with open(args.report) as f:
        print(summary_table(json.load(f)))
    if args.metrics:
        records = read_metrics(args.metrics)
        print(training_line(records))
        if args.loss_plot:
            print(f'loss curves: {plot_losses(records, args.loss_plot)}')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
