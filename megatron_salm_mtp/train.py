"""Train a SALM with MTP heads: ``python -m megatron_salm_mtp.train [--config FILE.yaml] [flags]``.

One CPU (the tiny configuration, gloo):
    python -m megatron_salm_mtp.train --config configs/tiny_cpu.yaml
One node, 8 GPUs:
    torchrun --nproc-per-node 8 -m megatron_salm_mtp.train --config configs/salm_1b_8gpu.yaml
Many nodes (SLURM, NGC container): launch/train_salm_mtp.sbatch
"""

import os
import sys

from .cli import RunConfig, parse_args
from .config import ConfigError


def parse_and_validate(argv=None) -> RunConfig:
    """Flags and YAML -> a RunConfig that passed every check needing no process group."""
    run = parse_args(argv)
    run.validate()
    return run


def _exit_on_config_error(err: ConfigError) -> None:
    """One line on stderr, from one rank (every rank finds the same error), exit status 2."""
    rank = os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))
    if rank == '0':
        print(f'error: {err}', file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv=None) -> None:
    try:
        run = parse_and_validate(argv)
        # Imported here: dist_checkpointing's helper process re-imports this module, and should not
        # pay for megatron-core and the model on every first save.
        from .training.loop import train
        train(run)
    except ConfigError as err:
        _exit_on_config_error(err)


if __name__ == '__main__':
    main()
