#!/usr/bin/env bash
# Virtual pipeline stages (interleaved 1F1B) on 4 GPUs: `bash tests/gpu/vpp.sh OUT CORPUS`, about
# 1-2 minutes. CORPUS holds train.jsonl and valid.jsonl (python -m megatron_salm_mtp.tools.corpus.synth
# --out CORPUS --num-utterances 240).
#
# The tiny SALM with 8 LLM layers and MTP D=2, Transformer Engine, bf16, TP=2 x PP=2 x VP=2 (two
# chunks of 2 layers per pipeline rank), sequence parallelism, the distributed optimizer with
# overlapped gradient reduction, 4 microbatches per step. Runs (logs and metrics in OUT/<run>/):
#   full     60 iterations
#   part1    the same, saved and stopped at iteration 30 (--exit-interval)
#   part2    resumed from that checkpoint to 60: its lm losses follow full's
#   novp     the same checkpoint loaded at TP=2 x PP=2 without VP, to iteration 35
# Prints the lm / mtp_1 losses of every run, then compares (bf16 kernels need not be bitwise):
# part2 vs full at iterations 35-60 (rtol 2e-2), novp vs full at 35 (rtol 5e-2). Exit 0 on PASS.
set -uo pipefail
out="${1:?usage: bash tests/gpu/vpp.sh OUT CORPUS}"
corpus="${2:?usage: bash tests/gpu/vpp.sh OUT CORPUS}"
PYTHON="${PYTHON:-python3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
corpus="$(cd "$corpus" && pwd)"
cd "$root"
export PYTHONWARNINGS=ignore CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS=4

common=(--config configs/tiny_cpu.yaml --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl"
        --num-layers 8 --transformer-impl transformer_engine --bf16
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel
        --use-distributed-optimizer --overlap-grad-reduce --micro-batch-size 4 --global-batch-size 16
        --train-iters 60 --lr-warmup-iters 5 --log-interval 5 --eval-interval 30 --eval-iters 1)
interleaved=(--virtual-pipeline-model-parallel-size 2)
train() { # run-name args...
  local name="$1"; shift
  echo "== $name"
  "$PYTHON" -m torch.distributed.run --nproc-per-node 4 --master-port $((29000 + RANDOM % 1000)) \
    -m megatron_salm_mtp.train "${common[@]}" --log-dir "$out/$name" "$@" > "$out/$name.log" 2>&1 \
    || { tail -n 30 "$out/$name.log"; echo "FAIL: $name (log: $out/$name.log)"; exit 1; }
  grep -hE "^ *iteration +[0-9]+/|validation at iteration" "$out/$name.log" | cut -c1-160
}
rm -rf "$out/ckpt"
train full "${interleaved[@]}"
train part1 "${interleaved[@]}" --save "$out/ckpt" --exit-interval 30
train part2 "${interleaved[@]}" --load "$out/ckpt"
train novp --load "$out/ckpt" --train-iters 35

"$PYTHON" - "$out" <<'EOF'
import json, math, os, sys
out = sys.argv[1]
def losses(run):
    with open(os.path.join(out, run, 'metrics.jsonl')) as f:
        return {r['iteration']: r['lm loss'] for r in map(json.loads, f) if r['split'] == 'train'}
full, part2, novp = losses('full'), losses('part2'), losses('novp')
problems = [f'{run} {it}: {value}' for run, got in (('full', full), ('part2', part2), ('novp', novp))
            for it, value in got.items() if not math.isfinite(value)]
if not full[60] < full[5]:
    problems.append(f'lm loss did not fall: {full[5]:.4f} at 5, {full[60]:.4f} at 60')
for it in range(35, 61, 5):
    if abs(part2[it] - full[it]) > 2e-2 * abs(full[it]):
        problems.append(f'resumed iteration {it}: {part2[it]:.5f} vs {full[it]:.5f}')
if abs(novp[35] - full[35]) > 5e-2 * abs(full[35]):
    problems.append(f'loaded without VP, iteration 35: {novp[35]:.5f} vs {full[35]:.5f}')
print(f'lm loss at 35: full {full[35]:.5f}, resumed {part2[35]:.5f}, without VP {novp[35]:.5f}; '
      f'at 60: full {full[60]:.5f}, resumed {part2[60]:.5f}')
print('FAIL: ' + '; '.join(problems) if problems else 'PASS')
sys.exit(1 if problems else 0)
EOF
