#!/usr/bin/env bash
# The main job on its embedded default: set up the environment, synthesise a small speech corpus
# (espeak-ng, offline), train the tiny SALM with two MTP heads and report validation figures.
# Runs on CPU here and on a GPU where there is one. Extra arguments go to the training command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
work="${QUICKSTART_DIR:-$root/runs/quickstart}"
mkdir -p "$work"
if [ ! -f "$work/corpus/train.jsonl" ]; then
  # up to 3 s: the tiny model's 128-token sequences hold that much audio plus its transcript
  python -m megatron_salm_mtp.data.synth --out "$work/corpus" --num-utterances "${NUM_UTTERANCES:-400}" --max-seconds 3
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
python -m megatron_salm_mtp.train --config "$root/configs/tiny_cpu.yaml" \
  --train-manifest "$work/corpus/train.jsonl" --valid-manifest "$work/corpus/valid.jsonl" \
  --log-dir "$work/logs" "$@"
echo "quickstart: metrics in $work/logs/metrics.jsonl"
