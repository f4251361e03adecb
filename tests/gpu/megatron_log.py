"""Checks on Megatron-LM training logs, for tests/gpu/pretrain_019.sh (no torch, no megatron).

    python tests/gpu/megatron_log.py run LOG --iters 30 --mtp-depths 2 [--first-iteration 16]
    python tests/gpu/megatron_log.py same RESUMED_LOG REFERENCE_LOG --from 20 [--rtol 0.05]
    python tests/gpu/megatron_log.py table LOG

``run``: the log reaches ``--iters``, every logged loss is finite, each MTP depth is logged, a
validation line names the MTP losses, and (from scratch) the lm loss fell from the first logged
step to the last.
``same``: from iteration ``--from`` on, both logs have the same consumed samples and (with
``--rtol``) training and validation lm losses within it; the largest relative differences are
printed either way. (A training line averages the iterations since the last one: compare runs
whose logging intervals line up, e.g. resumed at a multiple of ``--log-interval``.)
``table``: the losses of each logged iteration and the validation lines. Exit status 1 names
what failed.
"""

import argparse
import math
import re
import sys

TABLE_FIELDS = ('consumed samples', 'lm loss', 'mtp_1 loss', 'mtp_1 acc', 'mtp_2 loss', 'mtp_2 acc',
                'grad norm')

ITERATION = re.compile(r'\biteration\s+(\d+)/\s*(\d+)\s*\|')
VALIDATION = re.compile(r'validation loss at iteration (\d+) .*?\| lm loss value: ([^ |]+)')


def training_lines(path: str) -> dict:
    """{iteration: {field: value}} of Megatron-LM's training log lines (numbers as floats)."""
    lines = {}
    with open(path, errors='replace') as log:
        for line in log:
            match = ITERATION.search(line)
            if not match or 'lm loss:' not in line:
                continue
            fields = {}
            for part in line[match.end():].split('|'):
                key, sep, value = part.rpartition(':')
                if sep:
                    try:
                        fields[key.strip()] = float(value)
                    except ValueError:
                        continue
            lines[int(match.group(1))] = fields
    return lines


def validation_lines(path: str) -> list:
    with open(path, errors='replace') as log:
        return [line.strip() for line in log if 'validation loss at' in line]


def validation_losses(path: str) -> dict:
    """{iteration: lm loss} of the validation during training (not the one after it)."""
    losses = {}
    for line in validation_lines(path):
        match = VALIDATION.search(line)
        if match and 'on validation set' not in line:
            losses[int(match.group(1))] = float(match.group(2))
    return losses


def check_run(path: str, iters: int, mtp_depths: int, first_iteration: int) -> list:
    lines = training_lines(path)
    if not lines:
        return [f'{path}: no training log line with an lm loss']
    problems = []
    if max(lines) != iters:
        problems.append(f'{path}: last logged iteration {max(lines)}, expected {iters}')
    if min(lines) < first_iteration:
        problems.append(f'{path}: logs iteration {min(lines)}, expected to start at {first_iteration}')
    for iteration, fields in sorted(lines.items()):
        for key in ['lm loss'] + [f'mtp_{k} loss' for k in range(1, mtp_depths + 1)]:
            if key not in fields:
                problems.append(f'{path}: iteration {iteration} logs no {key!r}')
            elif not math.isfinite(fields[key]):
                problems.append(f'{path}: iteration {iteration}: {key} = {fields[key]}')
    # From scratch only: a resumed run may start on the plateau.
    first, last = lines[min(lines)].get('lm loss'), lines[max(lines)].get('lm loss')
    if first_iteration == 1 and first is not None and last is not None and not last < first:
        problems.append(f'{path}: lm loss did not fall ({first} at {min(lines)} -> {last} at {max(lines)})')
    validations = validation_lines(path)
    if not validations:
        problems.append(f'{path}: no validation line')
    elif mtp_depths and not all(f'mtp_{mtp_depths} loss value' in v for v in validations):
        problems.append(f'{path}: validation lines lack mtp_{mtp_depths} loss')
    return problems


def check_same(path: str, reference: str, start: int, rtol: float | None) -> list:
    mine, theirs = training_lines(path), training_lines(reference)
    shared = sorted(i for i in mine if i >= start and i in theirs)
    if not shared:
        return [f'{path} and {reference} share no logged iteration from {start} on']
    problems, worst = [], 0.0
    for iteration in shared:
        a, b = mine[iteration], theirs[iteration]
        if a.get('consumed samples') != b.get('consumed samples'):
            problems.append(f'iteration {iteration}: consumed samples {a.get("consumed samples")} vs '
                            f'{b.get("consumed samples")}')
        worst = max(worst, abs(a['lm loss'] - b['lm loss']) / abs(b['lm loss']))
    print(f'{path} vs {reference}: iterations {shared}, largest relative lm loss difference {worst:.2e}')
    if rtol is not None and worst > rtol:
        problems.append(f'lm loss differs by {worst:.2e} relative (> {rtol})')
    mine, theirs = validation_losses(path), validation_losses(reference)
    shared = sorted(i for i in mine if i >= start and i in theirs)
    if shared:
        worst = max(abs(mine[i] - theirs[i]) / abs(theirs[i]) for i in shared)
        print(f'  validation at {shared}: largest relative lm loss difference {worst:.2e}')
        if rtol is not None and worst > rtol:
            problems.append(f'validation lm loss differs by {worst:.2e} relative (> {rtol})')
    return problems


def print_table(path: str) -> None:
    for iteration, fields in sorted(training_lines(path).items()):
        shown = ' | '.join(f'{key} {fields[key]:.6g}' for key in TABLE_FIELDS if key in fields)
        print(f'  iteration {iteration:3d} | {shown}')
    for line in validation_lines(path):
        print(f'  {line}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser('run')
    run.add_argument('log')
    run.add_argument('--iters', type=int, required=True)
    run.add_argument('--mtp-depths', type=int, required=True)
    run.add_argument('--first-iteration', type=int, default=1)
    same = commands.add_parser('same')
    same.add_argument('log')
    same.add_argument('reference')
    same.add_argument('--from', dest='start', type=int, required=True)
    same.add_argument('--rtol', type=float, default=None)
    table = commands.add_parser('table')
    table.add_argument('log')
    args = parser.parse_args(argv)
    if args.command == 'table':
        print_table(args.log)
        return 0
    if args.command == 'run':
        problems = check_run(args.log, args.iters, args.mtp_depths, args.first_iteration)
    else:
        problems = check_same(args.log, args.reference, args.start, args.rtol)
    for problem in problems:
        print('FAIL:', problem)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
