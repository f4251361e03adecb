#!/usr/bin/env bash
# Speculative-decoding figures on GPUs: `bash tests/gpu/speculative.sh OUT CORPUS [MTP_GPUS [BASE_GPUS]]`.
#
# CORPUS: a synthetic corpus folder (train/valid/test.jsonl + audio/), made beforehand with
#   python -m megatron_salm_mtp.tools.corpus.synth --out CORPUS --num-utterances 4000
# (or made here, NUM_UTTERANCES of them, when CORPUS has no test.jsonl and espeak-ng is installed).
# MTP_GPUS, BASE_GPUS: comma-separated device ids of each training (default 0 and 1); with more
#   than one id a training is data-parallel over them. The same ids for both: one after the other.
#
# 1. Trains configs/asr_spec_gpu.yaml twice at the same time: with D=3 MTP heads and without MTP;
#    each run saves and stops after TRAIN_MINUTES (default 5, --exit-duration-in-mins) or at the
#    config's train_iters (TRAIN_FLAGS="--train-iters N" changes it), whichever comes first.
# 2. Evaluates both on the test split, greedy and speculative decoding at batch 1 (first
#    EVAL_UTTERANCES lines) and at batch 8 (first EVAL_UTTERANCES_BATCH8), at most MAX_NEW_TOKENS
#    (64: the longest synthetic transcript is 49 bytes) per utterance, the two batch sizes on a
#    model's two GPUs at once where it has two; the model without MTP: greedy only. About 3 minutes.
# 3. With HEADS_MINUTES set: trains HEADS_DEPTHS (3) MTP heads alone (--training-mode head_only) on
#    the model without MTP for HEADS_MINUTES (at most HEADS_ITERS, 1000, steps past its checkpoint),
#    then evaluates them with speculative decoding: the output stays that model's greedy output.
# Writes under OUT: train_{mtp,base[,heads]}.log (+ metrics), eval_*.{json,log,png}, summary.txt.
# Each step runs even when an earlier one failed; the exit status says whether all succeeded.
set -uo pipefail
out="${1:?usage: speculative.sh OUT CORPUS [GPUS]}"
corpus="${2:?usage: speculative.sh OUT CORPUS [GPUS]}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=2  # trainings x 6 data workers share the CPU cores
PYTHON="${PYTHON:-python3}"
TRAIN_MINUTES="${TRAIN_MINUTES:-5}"
CONFIG="${CONFIG:-configs/asr_spec_gpu.yaml}"
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"   # extra training flags, e.g. "--train-iters 500"
EVAL_UTTERANCES="${EVAL_UTTERANCES:-80}"           # first test lines decoded at batch 1
EVAL_UTTERANCES_BATCH8="${EVAL_UTTERANCES_BATCH8:-240}"  # ... and at batch 8
failed=0

if [ ! -f "$corpus/test.jsonl" ]; then  # made here when espeak-ng is available
  $PYTHON -m megatron_salm_mtp.tools.corpus.synth --out "$corpus" --num-utterances "${NUM_UTTERANCES:-4000}" > "$out/synth.log" 2>&1 \
    || { echo "no corpus in $corpus and it could not be made (see $out/synth.log): run python -m megatron_salm_mtp.tools.corpus.synth --out $corpus --num-utterances 4000 where espeak-ng is installed" >&2; exit 2; }
fi
gpus_mtp="${3:-0}"
gpus_base="${4:-1}"
{ echo "date: $(date -u)"; echo "gpus: MTP model $gpus_mtp, model without MTP $gpus_base"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | sort | uniq -c
  $PYTHON -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)"
  $PYTHON -c "import transformer_engine as te; print('transformer_engine', te.__version__)" 2>&1 | tail -1
  wc -l "$corpus"/{train,valid,test}.jsonl; } > "$out/summary.txt" 2>&1

train() { # name gpus port extra-flags...
  local name="$1" gpus="$2" port="$3"; shift 3
  local nproc; nproc=$(tr ',' '\n' <<< "$gpus" | wc -l)
  # The trainer saves and stops itself at the time limit; timeout only guards against a hang.
  CUDA_VISIBLE_DEVICES="$gpus" timeout -k 30 "$(( ${TRAIN_MINUTES%.*} * 60 + 240 ))" \
    $PYTHON -m torch.distributed.run --nproc-per-node "$nproc" --master-port "$port" \
      -m megatron_salm_mtp.train --config "$CONFIG" "${TRAIN_FLAGS[@]}" \
      --exit-duration-in-mins "$TRAIN_MINUTES" \
      --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl" \
      --save "$out/ckpt_$name" --log-dir "$out/train_$name" "$@" > "$out/train_$name.log" 2>&1 \
    || { echo "train $name: exit $?" >> "$out/summary.txt"; return 1; }
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
if [ "$gpus_mtp" = "$gpus_base" ]; then
  train mtp "$gpus_mtp" 29610 || failed=1
  train base "$gpus_base" 29620 --mtp-num-layers 0 || failed=1
else
  train mtp "$gpus_mtp" 29610 & pid_mtp=$!
  train base "$gpus_base" 29620 --mtp-num-layers 0 & pid_base=$!
  wait "$pid_mtp" || failed=1
  wait "$pid_base" || failed=1
fi
echo "training: $((SECONDS - start)) s" >> "$out/summary.txt"
for name in mtp base; do
  grep -h "iteration " "$out/train_$name.log" | tail -2 | sed "s/^/train $name: /" >> "$out/summary.txt"
done

start=$SECONDS
eval_model() { # name gpus extra-flags...: batch 1 on the first GPU, batch 8 on the second (if any)
  local name="$1" gpu_1 gpu_8 rc=0; IFS=, read -r gpu_1 gpu_8 _ <<< "$2"; shift 2
  if [ -n "$gpu_8" ]; then
    evaluate "$name" "$gpu_8" 8 --max-utterances "$EVAL_UTTERANCES_BATCH8" "$@" & local pid=$!
    evaluate "$name" "$gpu_1" 1 --max-utterances "$EVAL_UTTERANCES" "$@" || rc=1
    wait "$pid" || rc=1
  else
    evaluate "$name" "$gpu_1" 1 --max-utterances "$EVAL_UTTERANCES" "$@" || rc=1
    evaluate "$name" "$gpu_1" 8 --max-utterances "$EVAL_UTTERANCES_BATCH8" "$@" || rc=1
  fi
  return $rc
}
eval_mtp() { eval_model mtp "$gpus_mtp" --speculative; }
eval_base() { eval_model base "$gpus_base"; }
if [ "$gpus_mtp" = "$gpus_base" ]; then
  eval_mtp || failed=1
  eval_base || failed=1
else
  eval_mtp & pid_mtp=$!
  eval_base & pid_base=$!
  wait "$pid_mtp" || failed=1
  wait "$pid_base" || failed=1
fi
echo "evaluation: $((SECONDS - start)) s" >> "$out/summary.txt"

if [ -n "${HEADS_MINUTES:-}" ]; then
  start=$SECONDS
  if base_iter=$(cat "$out/ckpt_base/latest_checkpointed_iteration.txt" 2>/dev/null); then
    TRAIN_MINUTES="$HEADS_MINUTES" train heads "$gpus_base" 29630 --load "$out/ckpt_base" --no-load-optim \
      --training-mode head_only --mtp-num-layers "${HEADS_DEPTHS:-3}" \
      --train-iters "$((base_iter + ${HEADS_ITERS:-1000}))" || failed=1
    grep -h "iteration " "$out/train_heads.log" | tail -2 | sed "s/^/train heads: /" >> "$out/summary.txt"
    eval_model heads "$gpus_base" --speculative || failed=1
  else
    echo "heads: no checkpoint of the model without MTP" >> "$out/summary.txt"; failed=1
  fi
  echo "heads (training + evaluation): $((SECONDS - start)) s" >> "$out/summary.txt"
fi

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
