#!/usr/bin/env bash
# How long a checkpoint save holds training, synchronous vs --async-save, on the 1B-class shape:
#   bash tests/gpu/save_time.sh OUT CORPUS [NPROC]
# SHAPE=cpu (with NPROC 1 and PYTHON=the venv's python) runs a narrower model on a CPU.
# CORPUS holds train.jsonl (e.g. `python -m megatron_salm_mtp.tools.corpus.synth --out CORPUS
# --num-utterances 2000`); NPROC GPUs [8] at TP=2 (TP=1 on one GPU) with the distributed optimizer
# (fully parallel save over DP). Each run saves every INTERVAL iterations (5, 10, 15); the log lines
# "checkpoint of iteration N: training held S s" are the figures (the first save of a process
# also starts dist_checkpointing's writer: compare the later ones). MODES (default "sync async")
# picks the modes: sync, async, and either with _fully_reshardable (the distributed optimizer's
# state saved in that format, as before 2026-12-03, instead of dp_reshardable); at one GPU a
# fully_reshardable mode takes over three minutes, so a short call runs one. SAVES (default 3) is
# the number of saves, INTERVAL (default 5) the iterations between them; a 1B checkpoint is ~22 GB,
# so a 64 GB disk holds two (SAVES=2), and its background write takes longer than 5 steps.
set -euo pipefail
out="$1"; corpus="$2"; nproc="${3:-8}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
mkdir -p "$out"
ONE_B=(--num-layers 28 --hidden-size 2048 --ffn-hidden-size 6144 --num-attention-heads 16
       --num-query-groups 8 --kv-channels 128 --qk-layernorm --rotary-base 1000000
       --encoder-num-layers 12 --encoder-hidden-size 768 --encoder-num-attention-heads 12
       --num-mel-bins 80 --audio-frame-stack 4 --seq-length 1024 --bf16 --mtp-num-layers 2)
if [ "${SHAPE:-1b}" = cpu ]; then  # the same tensors, narrower (142 M parameters): a CPU's memory holds it
  ONE_B=(--num-layers 28 --hidden-size 512 --ffn-hidden-size 1536 --num-attention-heads 8
         --num-query-groups 4 --kv-channels 128 --qk-layernorm --rotary-base 1000000
         --encoder-num-layers 12 --encoder-hidden-size 384 --encoder-num-attention-heads 6
         --num-mel-bins 80 --audio-frame-stack 4 --seq-length 128 --bf16 --mtp-num-layers 2 --num-workers 0)
fi
tp=2; layout=(--tensor-model-parallel-size 2 --sequence-parallel)
[ "$nproc" -eq 1 ] && tp=1 && layout=(--tensor-model-parallel-size 1)
for mode in ${MODES:-sync async}; do
  extra=()
  case "$mode" in async*) extra+=(--async-save) ;; esac
  case "$mode" in *_fully_reshardable) extra+=(--dist-ckpt-optim-fully-reshardable) ;; esac
  PYTHONWARNINGS=ignore "${PYTHON:-python3}" -m torch.distributed.run --nproc-per-node "$nproc" -m megatron_salm_mtp.train \
    --config configs/tiny_cpu.yaml "${ONE_B[@]}" --train-manifest "$corpus/train.jsonl" --eval-interval 0 \
    "${layout[@]}" --use-distributed-optimizer \
    --micro-batch-size 4 --global-batch-size $((4 * nproc / tp)) --train-iters $((${INTERVAL:-5} * ${SAVES:-3})) --lr-warmup-iters 1 \
    --log-interval 5 --save "$out/ckpt_$mode" --overwrite-save --save-interval ${INTERVAL:-5} "${extra[@]}" \
    > "$out/$mode.log" 2>&1
  echo "== $mode: $(du -sh "$out/ckpt_$mode/iter_$(printf %07d $((${INTERVAL:-5} * ${SAVES:-3})))" | cut -f1) per checkpoint"
  grep -h "training held" "$out/$mode.log" | sed "s/.*checkpoint of/checkpoint of/"
  rm -rf "$out/ckpt_$mode"  # ~20 GB each at one GPU: the figures are in the log, the disk is small
done
