"""Train a SALM with MTP heads: ``python -m megatron_salm_mtp.train [--config FILE.yaml] [flags]``.

One CPU (the tiny configuration, gloo):
    python -m megatron_salm_mtp.train --config configs/tiny_cpu.yaml
One node, 8 GPUs:
    torchrun --nproc-per-node 8 -m megatron_salm_mtp.train --config configs/salm_1b_8gpu.yaml
Many nodes (SLURM, NGC container): launch/train_salm_mtp.sbatch
"""

from .cli import parse_args


def main(argv=None) -> None:
    # Imported here: dist_checkpointing's helper process re-imports this module, and should not
    # pay for megatron-core and the model on every first save.
    from .training.loop import train
    train(parse_args(argv))


if __name__ == '__main__':
    main()
