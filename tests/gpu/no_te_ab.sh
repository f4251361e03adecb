#!/usr/bin/env bash
# Training with and without Transformer Engine importable, on one GPU:
# `bash tests/gpu/no_te_ab.sh OUT CORPUS [ITERS]` (ITERS default 600: past the NaNs once seen at
# iterations 300-454 without TE; about 2 x (ITERS x 0.2 s + 1 min) on one H200).
#
# CORPUS holds train.jsonl (python -m megatron_salm_mtp.tools.corpus.synth --out CORPUS --num-utterances 4000;
# made here when missing and espeak-ng is installed). Both runs train configs/asr_spec_gpu.yaml (bf16,
# lr 1e-3, its 2000-iteration schedule) with the local spec, the same seed and data order, and stop
# (saved) at iteration ITERS (--exit-interval):
#   te      Transformer Engine importable, --transformer-impl local (core picks TE's FusedAdam and
#           TE's multi-tensor norm/scale kernels)
#   no_te   TE hidden: a folder first on PYTHONPATH whose transformer_engine/__init__.py raises
#           ModuleNotFoundError (core falls back to torch's AdamW and its local multi-tensor functions)
# CONFIG changes the configuration; TRAIN_FLAGS adds flags to both, e.g.
# "--no-check-for-nan-in-loss-and-grad" to see the runs without the gradient guard (as the NaN was
# first seen). Prints which spec and Adam each run used, both
# loss curves side by side, every skipped update and the final losses. Logs: OUT/<run>.log,
# metrics: OUT/<run>/metrics.jsonl. Exit 0 when both runs reach ITERS.
set -uo pipefail
out="${1:?usage: bash tests/gpu/no_te_ab.sh OUT CORPUS [ITERS]}"
corpus="${2:?usage: bash tests/gpu/no_te_ab.sh OUT CORPUS [ITERS]}"
iters="${3:-600}"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/asr_spec_gpu.yaml}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" "$corpus" && out="$(cd "$out" && pwd)" && corpus="$(cd "$corpus" && pwd)"
cd "$root"
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=4
read -r -a extra <<< "${TRAIN_FLAGS:-}"

"$PYTHON" -c "import transformer_engine.pytorch" 2>/dev/null \
  || { echo "FAIL: Transformer Engine does not import here; the A/B needs it installed" >&2; exit 2; }
if [ ! -f "$corpus/train.jsonl" ]; then
  "$PYTHON" -m megatron_salm_mtp.tools.corpus.synth --out "$corpus" --num-utterances 4000 > "$out/synth.log" 2>&1 \
    || { echo "FAIL: no corpus in $corpus and none could be made (see $out/synth.log)" >&2; exit 2; }
fi
hidden="$out/hide_te"
mkdir -p "$hidden/transformer_engine"
# ModuleNotFoundError, as for a missing package: some of core's modules catch only that.
echo 'raise ModuleNotFoundError("transformer_engine hidden by tests/gpu/no_te_ab.sh", name="transformer_engine")' \
  > "$hidden/transformer_engine/__init__.py"

status=0
train() { # name extra-env...
  local name="$1"; shift
  echo "== $name"
  env "$@" "$PYTHON" -m torch.distributed.run --nproc-per-node 1 --master-port $((29000 + RANDOM % 1000)) \
    -m megatron_salm_mtp.train --config "$CONFIG" --train-manifest "$corpus/train.jsonl" \
    --transformer-impl local --exit-interval "$iters" --log-interval 10 --eval-interval 0 \
    --save "$out/ckpt_$name" --log-dir "$out/$name" "${extra[@]}" > "$out/$name.log" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 "$out/$name.log"; echo "run $name: exit $rc"; status=1; }
  grep -hE "transformer implementation:|training.optim: optimizer: |update skipped|consecutive iterations" "$out/$name.log" \
    | sed -E 's/^.*(INFO|WARNING|ERROR) [a-z_.]+: //' | head -20
}
train te
train no_te "PYTHONPATH=$hidden${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - "$out" "$iters" <<'EOF'
import json, os, sys
out, iters = sys.argv[1], int(sys.argv[2])
def records(run):
    path = os.path.join(out, run, 'metrics.jsonl')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r['iteration']: r for r in map(json.loads, f) if r['split'] == 'train'}
te, no_te = records('te'), records('no_te')
print(f"{'iteration':>9} | {'lm loss te':>11} {'no_te':>11} | {'grad norm te':>12} {'no_te':>8} | skipped te / no_te")
for it in sorted(set(te) | set(no_te)):
    a, b = te.get(it, {}), no_te.get(it, {})
    print(f"{it:>9} | {a.get('lm loss', float('nan')):>11.4f} {b.get('lm loss', float('nan')):>11.4f} | "
          f"{a.get('grad_norm', float('nan')):>12.3f} {b.get('grad_norm', float('nan')):>8.3f} | "
          f"{a.get('skipped_iterations', '-')} / {b.get('skipped_iterations', '-')}")
for name, run in (('te', te), ('no_te', no_te)):
    last = run.get(max(run)) if run else None
    print(f"{name}: " + (f"reached iteration {max(run)} (of {iters}), final lm loss {last['lm loss']:.4f}, "
                         f"{last['skipped_iterations']} updates skipped" if last else 'no metrics'))
EOF
exit $status
