"""Train a SALM with MTP heads: ``python -m megatron_salm_mtp.train [--config FILE.yaml] [flags]``.

One CPU (the tiny configuration, gloo):
    python -m megatron_salm_mtp.train --config configs/tiny_cpu.yaml
One node, 8 GPUs:
    torchrun --nproc-per-node 8 -m megatron_salm_mtp.train --config configs/salm_1b_8gpu.yaml
Many nodes (SLURM, NGC container): launch/train_salm_mtp.sbatch
"""

from .cli import exit_on_config_error, exit_on_run_error, parse_args
from .config import ConfigError
from .config_checks import RunError
from .run_config import RunConfig


def parse_and_validate(argv=None) -> RunConfig:
    """Flags and YAML -> a RunConfig that passed every check needing no process group."""
    run = parse_args(argv)
    run.validate()
    return run


def main(argv=None) -> None:
    try:
        run = parse_and_validate(argv)
        # Imported here: dist_checkpointing's helper process re-imports this module, and should not
        # pay for megatron-core and the model on every first save.
        from .training.loop import train
        train(run)
    except ConfigError as err:
        exit_on_config_error(err)
    except RunError as err:
        exit_on_run_error(err)


if __name__ == '__main__':
    main()
