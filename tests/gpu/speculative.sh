#!/usr/bin/env bash
# Speculative-decoding figures on GPUs: `bash tests/gpu/speculative.sh OUT CORPUS [GPUS]`.
#
# CORPUS: a synthetic corpus folder (train/valid/test.jsonl + audio/), made beforehand with
#   python -m megatron_salm_mtp.data.synth --out CORPUS --num-utterances 4000
# (or made here, NUM_UTTERANCES of them, when CORPUS has no test.jsonl and espeak-ng is installed).
# GPUS: two device ids, comma-separated (default: CUDA_VISIBLE_DEVICES, else 0,1); with one id the
#   two trainings run one after the other.
#
# 1. Trains configs/asr_spec_gpu.yaml twice at the same time, one GPU each: with D=3 MTP heads and
#    without MTP; each run stops at TRAIN_SECONDS (default 300: SIGTERM makes it save and exit) or
#    at the config's train_iters, whichever comes first.
# 2. Evaluates both on the test split, both GPUs again in parallel: greedy and speculative decoding
#    at batch 1 (first EVAL_UTTERANCES lines) and at batch 8 (first EVAL_UTTERANCES_BATCH8), at most
#    MAX_NEW_TOKENS (64: the longest synthetic transcript is 49 bytes) per utterance; the model
#    without MTP: greedy only. About 3 minutes.
# Writes under OUT: train_{mtp,base}.log (+ metrics), eval_*.{json,log,png}, summary.txt.
# Each step runs even when an earlier one failed; the exit status says whether all succeeded.
set -uo pipefail
out="${1:?usage: speculative.sh OUT CORPUS [GPUS]}"
corpus="${2:?usage: speculative.sh OUT CORPUS [GPUS]}"
gpus="${3:-${CUDA_VISIBLE_DEVICES:-0,1}}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=2  # 2 trainings x 6 data workers share the CPU cores
PYTHON="${PYTHON:-python3}"
TRAIN_SECONDS="${TRAIN_SECONDS:-300}"
CONFIG="${CONFIG:-configs/asr_spec_gpu.yaml}"
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"   # extra training flags, e.g. "--train-iters 500"
EVAL_UTTERANCES="${EVAL_UTTERANCES:-80}"           # first test lines decoded at batch 1
EVAL_UTTERANCES_BATCH8="${EVAL_UTTERANCES_BATCH8:-240}"  # ... and at batch 8
failed=0

if [ ! -f "$corpus/test.jsonl" ]; then  # made here when espeak-ng is available
  $PYTHON -m megatron_salm_mtp.data.synth --out "$corpus" --num-utterances "${NUM_UTTERANCES:-4000}" > "$out/synth.log" 2>&1 \
    || { echo "no corpus in $corpus and it could not be made (see $out/synth.log): run python -m megatron_salm_mtp.data.synth --out $corpus --num-utterances 4000 where espeak-ng is installed" >&2; exit 2; }
fi
IFS=, read -r gpu_a gpu_b _ <<< "$gpus"
gpu_b="${gpu_b:-$gpu_a}"
{ echo "date: $(date -u)"; echo "gpus: $gpu_a $gpu_b"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -2
  $PYTHON -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)"
  $PYTHON -c "import transformer_engine as te; print('transformer_engine', te.__version__)" 2>&1 | tail -1
  wc -l "$corpus"/{train,valid,test}.jsonl; } > "$out/summary.txt" 2>&1

train() { # name gpu port extra-flags...
  local name="$1" gpu="$2" port="$3"; shift 3
  # One process (no launcher), so that timeout's SIGTERM reaches the trainer, which saves and exits;
  # --foreground keeps the signal from its DataLoader workers (a killed worker would abort the save).
  CUDA_VISIBLE_DEVICES="$gpu" MASTER_PORT="$port" timeout --foreground -k 90 "$TRAIN_SECONDS" \
    $PYTHON -m megatron_salm_mtp.train --config "$CONFIG" "${TRAIN_FLAGS[@]}" \
      --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl" \
      --save "$out/ckpt_$name" --log-dir "$out/train_$name" "$@" > "$out/train_$name.log" 2>&1
  local rc=$?
  # 124: stopped by the time budget, after its save (the checkpoint check below decides).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then echo "train $name: exit $rc" >> "$out/summary.txt"; return 1; fi
  [ -f "$out/ckpt_$name/latest_checkpointed_iteration.txt" ] || { echo "train $name: no checkpoint" >> "$out/summary.txt"; return 1; }
}

evaluate() { # name gpu batch-size extra-flags...
  local name="$1" gpu="$2" batch="$3"; shift 3
  CUDA_VISIBLE_DEVICES="$gpu" timeout -k 30 300 $PYTHON -m megatron_salm_mtp.evaluate \
    --load "$out/ckpt_$name" --manifest "$corpus/test.jsonl" --batch-size "$batch" \
    --max-new-tokens "${MAX_NEW_TOKENS:-64}" --out "$out/eval_${name}_b${batch}.json" "$@" > "$out/eval_${name}_b${batch}.log" 2>&1 \
    || { echo "evaluate $name batch $batch: exit $?" >> "$out/summary.txt"; return 1; }
}

start=$SECONDS
if [ "$gpu_a" = "$gpu_b" ]; then
  train mtp "$gpu_a" 29610 || failed=1
  train base "$gpu_b" 29620 --mtp-num-layers 0 || failed=1
else
  train mtp "$gpu_a" 29610 & pid_mtp=$!
  train base "$gpu_b" 29620 --mtp-num-layers 0 & pid_base=$!
  wait "$pid_mtp" || failed=1
  wait "$pid_base" || failed=1
fi
echo "training: $((SECONDS - start)) s" >> "$out/summary.txt"
for name in mtp base; do
  grep -h "iteration " "$out/train_$name.log" | tail -2 | sed "s/^/train $name: /" >> "$out/summary.txt"
done

start=$SECONDS
eval_mtp() {
  local rc=0
  evaluate mtp "$gpu_a" 1 --speculative --max-utterances "$EVAL_UTTERANCES" || rc=1
  evaluate mtp "$gpu_a" 8 --speculative --max-utterances "$EVAL_UTTERANCES_BATCH8" || rc=1
  return $rc
}
eval_base() {
  local rc=0
  evaluate base "$gpu_b" 1 --max-utterances "$EVAL_UTTERANCES" || rc=1
  evaluate base "$gpu_b" 8 --max-utterances "$EVAL_UTTERANCES_BATCH8" || rc=1
  return $rc
}
if [ "$gpu_a" = "$gpu_b" ]; then
  eval_mtp || failed=1
  eval_base || failed=1
else
  eval_mtp & pid_mtp=$!
  eval_base & pid_base=$!
  wait "$pid_mtp" || failed=1
  wait "$pid_base" || failed=1
fi
echo "evaluation: $((SECONDS - start)) s" >> "$out/summary.txt"

# One line per report: WER (overall, per subset), acceptance per depth, tokens per forward, speed.
$PYTHON - "$out" >> "$out/summary.txt" 2>&1 <<'PY'
import glob, json, os, sys
def fmt(x, spec='.2f'):
    return 'n/a' if x is None else format(x, spec)
for path in sorted(glob.glob(os.path.join(sys.argv[1], 'eval_*.json'))):
    report = json.load(open(path))
    print(f"== {os.path.basename(path)}: {report['utterances']} utterances, batch {report['batch_size']}, "
          f"{report['device']}, {report['dtype']}, iteration {report['iteration']}")
    for mode, fig in report['modes'].items():
        subsets = ' '.join(f"{k}={v['wer']:.3f}" for k, v in fig['subsets'].items())
        line = (f"  {mode}: WER {fig['wer']:.4f} ({subsets}) | tokens/s {fig['decode_tokens_per_s']:.1f} "
                f"| RTF {fig['real_time_factor']:.4f} | tokens/forward {fmt(fig['tokens_per_trunk_forward'])}")
        if 'acceptance_per_depth' in fig:
            line += f" | acceptance {[fmt(a, '.3f') for a in fig['acceptance_per_depth']]}"
            line += ' | per subset ' + ' '.join(
                f"{k}:{[fmt(a, '.3f') for a in v['acceptance_per_depth']]}/{fmt(v['tokens_per_trunk_forward'])}"
                for k, v in fig['subsets'].items())
        print(line)
    if 'speculative_vs_greedy' in report:
        c = report['speculative_vs_greedy']
        print(f"  speedup {c['speedup']:.2f}x | mismatched utterances {c['mismatched_utterances']}")
PY
cat "$out/summary.txt"
exit "$failed"
