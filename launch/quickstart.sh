#!/usr/bin/env bash
# The main job on its embedded default: set up the environment, synthesise a small speech corpus
# (espeak-ng, offline), train the tiny SALM with two MTP heads and save it, transcribe the test
# split greedily and with MTP self-speculative decoding, and end with a table (WER, acceptance per
# MTP depth, tokens per trunk forward) and a loss-curve PNG. Runs on CPU here and on a GPU where
# there is one. Extra arguments go to the training command. Run again, it resumes from its
# checkpoint (nothing left to train) and evaluates again.
#   QUICKSTART_DIR (runs/quickstart), NUM_UTTERANCES (400), EVAL_UTTERANCES (48: test lines decoded)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
work="${QUICKSTART_DIR:-$root/runs/quickstart}"
mkdir -p "$work"
if [ ! -f "$work/corpus/train.jsonl" ]; then
  # up to 3 s: the tiny model's 128-token sequences hold that much audio plus its transcript
  python -m megatron_salm_mtp.tools.corpus.synth --out "$work/corpus" --num-utterances "${NUM_UTTERANCES:-400}" --max-seconds 3
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
python -m megatron_salm_mtp.train --config "$root/configs/tiny_cpu.yaml" \
  --train-manifest "$work/corpus/train.jsonl" --valid-manifest "$work/corpus/valid.jsonl" \
  --log-dir "$work/logs" --save "$work/ckpt" --load "$work/ckpt" "$@"
python -m megatron_salm_mtp.evaluate --load "$work/ckpt" --manifest "$work/corpus/test.jsonl" --speculative \
  --batch-size 8 --max-utterances "${EVAL_UTTERANCES:-48}" --out "$work/eval/" --out-manifest "$work/eval/test_pred.jsonl"
echo
python -m megatron_salm_mtp.summarize --report "$work/eval/report.json" --metrics "$work/logs/metrics.jsonl" \
  --loss-plot "$work/loss_curve.png"
echo "quickstart: report $work/eval/report.json, transcripts $work/eval/test_pred.jsonl, metrics $work/logs/metrics.jsonl"
