#!/usr/bin/env bash
# The SALM under Megatron-LM's own pretrain() (megatron-core 0.19.x wheel + Transformer Engine,
# 2 GPUs): `bash tests/gpu/pretrain_019.sh OUT [CORPUS]`, about 2-3 minutes.
#
# CORPUS: a folder with train.jsonl and valid.jsonl (python -m megatron_salm_mtp.tools.corpus.synth);
# without it, one is synthesised into OUT/corpus (espeak-ng), or made of tones where espeak-ng is
# missing. Needs python3 (PYTHON=... to change) with torch, the megatron-core 0.19.x wheel (its
# megatron.training imports tqdm, psutil and pyyaml), Transformer Engine and 2 GPUs; all checked
# before the first launch. Runs, each a torchrun of `python -m megatron_salm_mtp.megatron_lm.pretrain`
# with the tiny SALM (configs/tiny_cpu.yaml's shape), bf16, MTP D=2, validation every 10 iterations:
#   gpu1_full     1 GPU, 30 iterations (the reference), saved at the end
#   gpu1_part1    1 GPU, stopped and saved at iteration 15 (--exit-interval)
#   gpu1_part2    1 GPU, resumed from that checkpoint (--load) to 30: same consumed samples and
#                 lm losses as gpu1_full from iteration 20 on (rtol 5e-2: kernels need not be bitwise)
#   gpu2_tp2      2 GPUs, TP=2 + sequence parallelism + distributed optimizer, 30 iterations, saved;
#                 same consumed samples as gpu1_full (its losses are printed beside, not bounded:
#                 TP shards start from other random streams)
# Every run must reach its last iteration with finite lm and mtp_1/mtp_2 losses (from scratch, a
# falling lm loss) and validation lines with MTP losses (tests/gpu/megatron_log.py). Logs: OUT/<run>.log;
# OUT/summary.txt ends with PASS or FAIL and the reason. Exit status 0 only on PASS.
set -uo pipefail
out="${1:?usage: bash tests/gpu/pretrain_019.sh OUT [CORPUS]}"
corpus="${2:-}"
PYTHON="${PYTHON:-python3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
if [ -n "$corpus" ]; then
  corpus="$(cd "$corpus" && pwd)" || { echo "FAIL: corpus folder $2 not found" >&2; exit 1; }
fi
cd "$root"
export PYTHONWARNINGS=ignore CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS=4
summary="$out/summary.txt"
: > "$summary"

say() { echo "$*" | tee -a "$summary"; }
fail() { say "FAIL: $*"; exit 1; }

# --- environment: what pretrain() needs, checked before any launch ---------------------------
"$PYTHON" - > "$out/environment.log" 2>&1 <<'EOF' || { cat "$out/environment.log"; fail "environment check (log: $out/environment.log)"; }
import torch
from megatron.core.package_info import __version__
import megatron.training.training  # noqa: F401  (pretrain)
from megatron_salm_mtp.megatron_lm import require_megatron_training
require_megatron_training()
import transformer_engine
print(f'megatron-core {__version__}, torch {torch.__version__}, TE {transformer_engine.__version__}, '
      f'{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}')
assert torch.cuda.device_count() >= 2, 'the TP=2 run needs 2 GPUs'
EOF
say "$(tail -n 1 "$out/environment.log")"

# --- corpus -------------------------------------------------------------------------------------
if [ -z "$corpus" ]; then
  corpus="$out/corpus"
  if ! "$PYTHON" -m megatron_salm_mtp.tools.corpus.synth --out "$corpus" --num-utterances 240 > "$out/corpus.log" 2>&1; then
    say "espeak-ng corpus unavailable (see $out/corpus.log): using tones"
    rm -rf "$corpus"
    "$PYTHON" - "$corpus" >> "$out/corpus.log" 2>&1 <<'EOF' || fail "tone corpus (log: $out/corpus.log)"
import os, shutil, sys
from tests.support.data_fixtures import make_corpus  # stdin: the repository root is on sys.path
root = sys.argv[1]
make_corpus(root, n=160, seconds=(1.0, 4.0), text='tone number {i}')
make_corpus(os.path.join(root, 'held_out'), n=32, seconds=(1.0, 4.0), text='tone number {i}')
shutil.copy(os.path.join(root, 'held_out', 'train.jsonl'), os.path.join(root, 'valid.jsonl'))
with open(os.path.join(root, 'valid.jsonl')) as f:  # paths relative to the manifest's folder
    rows = f.read().replace('"wav/', '"held_out/wav/')
with open(os.path.join(root, 'valid.jsonl'), 'w') as f:
    f.write(rows)
EOF
  fi
fi
[ -s "$corpus/train.jsonl" ] && [ -s "$corpus/valid.jsonl" ] || fail "$corpus lacks train.jsonl or valid.jsonl"
say "corpus: $corpus ($(wc -l < "$corpus/train.jsonl") train, $(wc -l < "$corpus/valid.jsonl") valid)"

# --- flags, as in Megatron-LM's example scripts ---------------------------------------------------
MODEL_ARGS=(--num-layers 4 --hidden-size 128 --ffn-hidden-size 352 --num-attention-heads 4
            --group-query-attention --num-query-groups 2 --qk-layernorm --seq-length 128
            --max-position-embeddings 128 --position-embedding-type rope --normalization RMSNorm
            --swiglu --disable-bias-linear --hidden-dropout 0 --attention-dropout 0
            --make-vocab-size-divisible-by 16 --bf16)
MTP_ARGS=(--mtp-num-layers 2 --mtp-loss-scaling-factor 0.3)
SALM_ARGS=(--encoder-num-layers 2 --encoder-hidden-size 128 --encoder-num-attention-heads 4
           --num-mel-bins 80 --audio-frame-stack 4 --prompt-template plain
           --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl")
TRAINING_ARGS=(--micro-batch-size 8 --global-batch-size 16 --train-iters 30 --lr 2e-3 --min-lr 2e-4
               --lr-warmup-iters 3 --lr-decay-style cosine --weight-decay 0.01 --clip-grad 1.0
               --adam-beta2 0.95 --seed 1234 --num-workers 2)
LOGGING_ARGS=(--log-interval 5 --eval-interval 10 --eval-iters 2)

launch() { # name nproc flags...
  local name="$1" nproc="$2"; shift 2
  say "== $name: $nproc GPU(s) $*"
  local started=$SECONDS
  timeout 480 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
    -m megatron_salm_mtp.megatron_lm.pretrain "${MODEL_ARGS[@]}" "${MTP_ARGS[@]}" "${SALM_ARGS[@]}" \
    "${TRAINING_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    grep -n -m 5 -E "Error|error:|Traceback" "$out/$name.log" | tee -a "$summary"
    tail -n 40 "$out/$name.log"
    fail "$name exited with status $rc after $((SECONDS - started)) s (log: $out/$name.log)"
  fi
  say "   done in $((SECONDS - started)) s"
  "$PYTHON" tests/gpu/megatron_log.py table "$out/$name.log" | tee -a "$summary"
}

check() { # megatron_log.py arguments
  "$PYTHON" tests/gpu/megatron_log.py "$@" 2>&1 | tee -a "$summary"
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail "check: megatron_log.py $*"
}

ckpt="$out/checkpoints"
rm -rf "$ckpt"
launch gpu1_full 1 --save "$ckpt/full" --save-interval 30
check run "$out/gpu1_full.log" --iters 30 --mtp-depths 2
[ -f "$ckpt/full/latest_checkpointed_iteration.txt" ] || fail "gpu1_full wrote no checkpoint tracker in $ckpt/full"

launch gpu1_part1 1 --save "$ckpt/resume" --save-interval 15 --exit-interval 15
[ "$(cat "$ckpt/resume/latest_checkpointed_iteration.txt" 2>/dev/null)" = "15" ] \
  || fail "gpu1_part1 did not leave a checkpoint at iteration 15 in $ckpt/resume"
launch gpu1_part2 1 --load "$ckpt/resume" --save "$ckpt/resume" --save-interval 15
grep -q "successfully loaded checkpoint from $ckpt/resume" "$out/gpu1_part2.log" \
  || fail "gpu1_part2 did not report loading $ckpt/resume"
check run "$out/gpu1_part2.log" --iters 30 --mtp-depths 2 --first-iteration 16
check same "$out/gpu1_part2.log" "$out/gpu1_full.log" --from 20 --rtol 5e-2

launch gpu2_tp2 2 --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer \
  --save "$ckpt/tp2" --save-interval 30
check run "$out/gpu2_tp2.log" --iters 30 --mtp-depths 2
# TP=2 initialises its shards from other random streams: same data, losses compared but not bounded.
check same "$out/gpu2_tp2.log" "$out/gpu1_full.log" --from 5

say "PASS: Megatron-LM pretrain() ran the SALM on 1 GPU (save, stop, resume) and at TP=2"
