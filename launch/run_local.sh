#!/usr/bin/env bash
# Train on one machine with torchrun; every argument goes to `python -m megatron_salm_mtp.train`.
#
#   launch/run_local.sh --config configs/tiny_cpu.yaml --train-manifest M --valid-manifest V
#   launch/run_local.sh --config configs/salm_1b_8gpu.yaml --train-manifest M --valid-manifest V \
#       --tokenizer-model /models/Qwen3-1.7B --save ckpt/salm1b --load ckpt/salm1b
#   NPROC_PER_NODE=2 launch/run_local.sh --config configs/tiny_cpu.yaml --pipeline-model-parallel-size 2 ...
#
# Environment: NPROC_PER_NODE ranks [one per visible GPU, 1 without GPUs], PYTHON [python],
# MASTER_PORT [a free one]. Multi-node runs: launch/train_salm_mtp.sbatch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}

count_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then  # what torch will see
    local visible=${CUDA_VISIBLE_DEVICES//[[:space:]]/}
    [ -n "$visible" ] && [ "$visible" != "-1" ] && echo "$visible" | tr ',' '\n' | grep -c . && return
    echo 0
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(count_gpus)
  [ "$NPROC_PER_NODE" -ge 1 ] 2>/dev/null || NPROC_PER_NODE=1
fi

# TP size, from the flags or the YAML they name, decides CUDA_DEVICE_MAX_CONNECTIONS: with TP > 1,
# TP's collectives overlap compute only if kernels are queued in issue order.
tp="" config=""
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --config) config=${args[i + 1]} ;;
    --tensor-model-parallel-size) tp=${args[i + 1]} ;;
  esac
done
if [ -z "$tp" ] && [ -f "$config" ]; then
  tp=$(sed -n 's/^tensor_model_parallel_size: *\([0-9]*\).*/\1/p' "$config" | tail -n 1)
fi
if [ "${tp:-1}" -gt 1 ]; then export CUDA_DEVICE_MAX_CONNECTIONS=1; fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
launcher=("$PYTHON" -m torch.distributed.run --nnodes 1 --nproc-per-node "$NPROC_PER_NODE")
if [ -n "${MASTER_PORT:-}" ]; then
  launcher+=(--master-addr 127.0.0.1 --master-port "$MASTER_PORT")
else
  launcher+=(--standalone)  # rendezvous on a free local port: several runs can share the machine
fi
echo "run_local: ${launcher[*]} -m megatron_salm_mtp.train $*" >&2
exec "${launcher[@]}" -m megatron_salm_mtp.train "$@"
