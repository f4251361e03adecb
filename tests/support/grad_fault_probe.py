"""Runs the Trainer (under torchrun or alone) with an inf written into one rank's gradient buffer
after the backward pass of chosen iterations; prints what the gradient-guard tests assert.

    python tests/support/grad_fault_probe.py --fault-iterations 2,3 --fault-rank 0 TRAINING FLAGS...

Every rank prints one line ``PROBE {"rank", "skipped", "iteration", "finite", "stopped",
"checksum"}``: whether all of its parameters are finite after training, and their sum.
"""

import argparse
import json
import sys

import torch

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.training import loop


def inject_faults(trainer, iterations, rank) -> None:
    """After each backward pass of ``iterations`` (1-based), on ``rank`` only, put an inf into
    the first trainable parameter's gradient buffer: after the DP reduction, so no other rank
    sees it unless the guard tells them."""
    forward_backward = loop.forward_backward

    def with_fault(model, microbatches, cfg, forward_only=False, **options):
        totals = forward_backward(model, microbatches, cfg, forward_only=forward_only, **options)
        if not forward_only and trainer.iteration + 1 in iterations and torch.distributed.get_rank() == rank:
            param = next(p for p in model[0].parameters() if p.requires_grad)
            param.main_grad.view(-1)[0] = float('inf')
        return totals

    loop.forward_backward = with_fault


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('--fault-iterations', required=True)
    parser.add_argument('--fault-rank', type=int, default=0)
    probe, flags = parser.parse_known_args(argv)
    iterations, rank = {int(i) for i in probe.fault_iterations.split(',')}, probe.fault_rank
    trainer = loop.Trainer(parse_args(flags))
    inject_faults(trainer, iterations, rank)
    stopped = None
    try:
        trainer.fit()
    except RuntimeError as err:
        stopped = str(err)
    params = [p.detach() for chunk in trainer.model for p in chunk.parameters()]
    print('PROBE ' + json.dumps({
        'rank': torch.distributed.get_rank(), 'skipped': trainer.skipped, 'iteration': trainer.iteration,
        'finite': all(bool(torch.isfinite(p).all()) for p in params), 'stopped': stopped,
        'checksum': sum(float(p.double().sum()) for p in params)}), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
