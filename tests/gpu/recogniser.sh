#!/usr/bin/env bash
# The recogniser's figures on one GPU (docs/quality.md), in stages that each fit one call of a
# machine whose calls are limited to minutes:
#
#   bash tests/gpu/recogniser.sh corpus CORPUS N [synth flags]       synthesise N utterances
#        (tools.corpus.synth) and train the corpus's SentencePiece tokenizer (CORPUS/tok.model);
#        with --synthetic-accents, also CORPUS/train_natural.jsonl: the train lines spoken by
#        espeak-ng's own voices (about half), for a probe of the accents against none
#   bash tests/gpu/recogniser.sh start OUT CORPUS NAME [train flags]  start one training of
#        CONFIG (default configs/asr_gpu.yaml) in its own session and return at once; it writes
#        OUT/NAME.log, OUT/ckpt_NAME and OUT/train_NAME/metrics.jsonl; when OUT/ckpt_NAME already
#        holds a checkpoint (a run stopped by --exit-duration-in-mins), it resumes from it
#   bash tests/gpu/recogniser.sh encoder OUT CORPUS NAME [train flags]
#        stage 1 of the two-stage recipe: start as above with ENCODER_CONFIG (default
#        configs/asr_gpu_encoder.yaml: the encoder and its CTC head on CTC alone)
#   bash tests/gpu/recogniser.sh finetune OUT CORPUS NAME FROM [train flags]
#        stage 2: start as above (CONFIG) from the weights of OUT/ckpt_FROM (--finetune: iteration
#        0, fresh optimizer); once OUT/ckpt_NAME holds a checkpoint, it resumes from that instead
#   bash tests/gpu/recogniser.sh wait OUT SECONDS                     print each training's last
#        log line every minute until all have ended or SECONDS have passed
#   bash tests/gpu/recogniser.sh evaluate OUT CORPUS NAME TAG [evaluate flags]
#        evaluate OUT/ckpt_NAME on CORPUS's test and test_unseen splits -> OUT/eval_NAME_TAG.json
#   bash tests/gpu/recogniser.sh text OUT CORPUS NAME [train flags]
#        stage 0 (optional): start TEXT_CONFIG (default configs/asr_gpu_text.yaml: the LLM on the
#        text pool's training share, CORPUS/train_text.jsonl, which the corpus stage writes)
#   bash tests/gpu/recogniser.sh pipeline OUT CORPUS [MTP_MINUTES]
#        the whole two-stage recipe back to back, for a caller that only polls (GPU calls of a few
#        minutes): with TEXT_MINUTES set, stage 0 (txt) for that many minutes first, the encoder
#        stage from its weights and ENCODER_MINUTES (default 8, as its config) less TEXT_MINUTES
#        (without a text stage, the encoder stage has ENCODER_MINUTES); with TEXT_MIX=K, stage 2
#        also trains on K texts of CORPUS/train_text.jsonl drawn at random (the LLM's English
#        beside the transcripts, in the same steps: rows with audio keep it listening); CTC_UNITS (default
#        characters; phonemes: the corpus's espeak-ng IPA) are every stage's --ctc-target-units;
#        STAGE_FLAGS (default none) are given to every training stage as well (model sizes, for one);
#        TWO_ITERS=N (with TWO_MINUTES, default 10) sets stage 2's length in steps (and minutes);
#        encoder (enc), finetune without MTP (two), its evaluation with --audio-ablation (and,
#        unless CTC_UNITS is phonemes, --ctc-greedy, the CTC head alone, and --ctc-joint-weight
#        JOINT_WEIGHTS, default "0.3", decoding steered by the CTC head: greedy and a beam search
#        per size of BEAM_SIZES, default "1 4", 1 being the greedy one, each again with the words
#        of train and the text pool's training share as a lexicon at each of LEXICON_PENALTIES,
#        default "2") on the first
#        EVAL_UTTERANCES (default 1000) of each test split (200 give +-0.03-0.05 on a WER),
#        its word errors by the word's count in train (eval_two_greedy_bands.txt),
#        D=3 MTP heads trained on the frozen trunk (two_mtp: --training-mode head_only, the trunk's
#        WER unchanged by construction) for MTP_MINUTES (default 3, at most MTP_ITERS steps, default
#        1100, the length of their cosine; 0: no heads), and their greedy and speculative
#        evaluation with CUDA graphs at each batch size of SPEC_BATCHES (default "64 8 1": 64 on
#        EVAL_UTTERANCES per split, 8 on 200, 1 on 100); with JOINT_HEADS=D instead, D heads
#        trained alongside stage 2 on the trunk's detached states (--mtp-detach-trunk, distilled
#        from the trunk), evaluated so; prints "PIPELINE DONE" at the end
#   bash tests/gpu/recogniser.sh probe OUT CORPUS MINUTES NAME[:FLAGS] NAME[:FLAGS] ...
#        encoder recipes side by side at equal wall time, before any stage 2: each NAME an encoder
#        stage (as `encoder`, with its FLAGS) for MINUTES, all sharing the GPU; then each one's CTC
#        head alone scored on the first EVAL_UTTERANCES (default 1000) of each test split, per accent
#        (OUT/eval_NAME_ctc.json), and each compared with the first NAME, utterance by utterance
#        (tools.compare_evals --mode ctc_greedy); prints "PROBE DONE" at the end. The accent gap of
#        docs/quality.md is the encoder's: a probe measures an encoder lever in ~12 GPU minutes.
#
# Probe example (one H200): the synthetic accents against none, and intermediate CTC, on one corpus:
#   bash tests/gpu/recogniser.sh corpus /root/corpus 80000 --text-source .gpu/pools.json.gz --synthetic-accents 6
#   bash tests/gpu/recogniser.sh probe /root/runs /root/corpus 8 "none:--train-manifest /root/corpus/train_natural.jsonl" \
#       accents "inter:--ctc-intermediate-layer 4"
#
# Two-stage example (one H200): stage 1, then stage 2 without and with MTP heads side by side
# (stage 2 gives stage 1's CTC units; repeat a stage's command after a stop to resume it):
#   bash tests/gpu/recogniser.sh corpus /root/corpus 80000 --text-source .gpu/pools.json.gz --synthetic-accents 6
#   bash tests/gpu/recogniser.sh encoder /root/runs /root/corpus enc
#   bash tests/gpu/recogniser.sh wait /root/runs 570
#   bash tests/gpu/recogniser.sh finetune /root/runs /root/corpus two enc --ctc-target-units characters
#   bash tests/gpu/recogniser.sh finetune /root/runs /root/corpus two_mtp enc --ctc-target-units characters \
#       --mtp-num-layers 3 --mtp-detach-trunk
#   bash tests/gpu/recogniser.sh wait /root/runs 570
#   bash tests/gpu/recogniser.sh evaluate /root/runs /root/corpus two b32 --batch-size 32 --audio-ablation
#
# Joint-only example (one H200; the trainings share the GPU):
#   bash tests/gpu/recogniser.sh corpus /root/corpus 60000 --text-source .gpu/pools.json.gz
#   bash tests/gpu/recogniser.sh start /root/runs /root/corpus base --mtp-num-layers 0
#   bash tests/gpu/recogniser.sh start /root/runs /root/corpus mtp --mtp-num-layers 3 --mtp-detach-trunk
#   bash tests/gpu/recogniser.sh wait /root/runs 570
#   bash tests/gpu/recogniser.sh evaluate /root/runs /root/corpus base b32 --batch-size 32 --audio-ablation
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/asr_gpu.yaml}"
ENCODER_CONFIG="${ENCODER_CONFIG:-configs/asr_gpu_encoder.yaml}"
TEXT_CONFIG="${TEXT_CONFIG:-configs/asr_gpu_text.yaml}"
VOCAB_SIZE="${VOCAB_SIZE:-1024}"
stage="${1:?usage: recogniser.sh corpus|start|encoder|text|finetune|wait|evaluate|pipeline|probe ...}"
shift

corpus() {  # CORPUS N [synth flags]
  local dir="$1" n="$2"; shift 2
  local source=() previous=''
  for arg in "$@"; do [ "$previous" = --text-source ] && source=(--text-source "$arg"); previous="$arg"; done
  $PYTHON -m megatron_salm_mtp.tools.corpus.synth --out "$dir" --num-utterances "$n" "$@" || return 1
  if grep -q '"voice": "acc/' "$dir/train.jsonl"; then
    grep -v '"voice": "acc/' "$dir/train.jsonl" > "$dir/train_natural.jsonl"
    echo "wrote $dir/train_natural.jsonl: $(wc -l < "$dir/train_natural.jsonl") of $(wc -l < "$dir/train.jsonl") train lines, no synthetic accent"
  fi
  $PYTHON -m megatron_salm_mtp.tools.corpus.text_manifest ${source[@]+"${source[@]}"} \
    --out "$dir/train_text.jsonl" || return 1
  $PYTHON -m megatron_salm_mtp.data.train_tokenizer --manifest "$dir/train.jsonl" \
    --vocab-size "$VOCAB_SIZE" --out "$dir/tok.model"
}

has_checkpoint() { [ -f "$1/latest_checkpointed_iteration.txt" ]; }

launch() {  # CONFIG OUT CORPUS NAME [train flags]: resumes OUT/ckpt_NAME when it holds a checkpoint
  local config="$1" out="$2" dir="$3" name="$4"; shift 4
  local resume=()
  has_checkpoint "$out/ckpt_$name" && resume=(--load "$out/ckpt_$name")
  mkdir -p "$out"
  # Its own session: the training outlives the command that started it, and a world of one
  # rendezvouses in memory, so several run side by side without port clashes.
  setsid nohup $PYTHON -m megatron_salm_mtp.train --config "$config" --tokenizer-model "$dir/tok.model" \
    --train-manifest "$dir/train.jsonl" --valid-manifest "$dir/valid.jsonl" \
    --save "$out/ckpt_$name" --log-dir "$out/train_$name" ${resume[@]+"${resume[@]}"} "$@" >> "$out/$name.log" 2>&1 < /dev/null &
  echo "started $name (pid $!)${resume:+, resuming $out/ckpt_$name}: $out/$name.log"
}

start() { launch "$CONFIG" "$@"; }  # OUT CORPUS NAME [train flags]

encoder() { launch "$ENCODER_CONFIG" "$@"; }  # OUT CORPUS NAME [train flags]

text() {  # OUT CORPUS NAME [train flags]
  launch "$TEXT_CONFIG" "$1" "$2" "$3" --train-manifest "$2/train_text.jsonl" "${@:4}"
}

from_stage() {  # CONFIG OUT CORPUS NAME FROM [train flags]: a new run from FROM's weights, or resumed
  local config="$1" out="$2" dir="$3" name="$4" from="$5"; shift 5
  if has_checkpoint "$out/ckpt_$name"; then
    launch "$config" "$out" "$dir" "$name" "$@"
  elif has_checkpoint "$out/ckpt_$from"; then
    launch "$config" "$out" "$dir" "$name" --load "$out/ckpt_$from" --finetune "$@"
  else
    echo "stage $name: $out/ckpt_$from holds no checkpoint (run its stage first)" >&2
    return 1
  fi
}

finetune() { from_stage "$CONFIG" "$@"; }  # OUT CORPUS NAME FROM [train flags]

wait_all() {  # OUT SECONDS
  local out="$1" until=$((SECONDS + $2))
  while [ $SECONDS -lt $until ]; do
    local running=0
    for log in "$out"/*.log; do
      case "$log" in *eval_*) continue ;; esac
      pgrep -f -- "--log-dir $out/train_$(basename "$log" .log)( |\$)" > /dev/null && running=$((running + 1))
      echo "$(date -u +%T) $(basename "$log" .log): $(grep -E 'iteration|Error|error' "$log" | tail -n 1 | cut -c1-220)"
    done
    [ "$running" -eq 0 ] && { echo "all trainings ended"; return 0; }
    # Look every 5 s (a chained stage starts as soon as this one ends), print every minute.
    local next_print=$((SECONDS + 60))
    while [ $SECONDS -lt $next_print ] && [ $SECONDS -lt $until ]; do
      sleep 5
      pgrep -f -- "--log-dir $out/train_" > /dev/null || break
    done
  done
  echo "still running after $2 s"
}

evaluate() {  # OUT CORPUS NAME TAG [evaluate flags]
  local out="$1" dir="$2" name="$3" tag="$4"; shift 4
  $PYTHON -m megatron_salm_mtp.evaluate --load "$out/ckpt_$name" \
    --manifest "$dir/test.jsonl,$dir/test_unseen.jsonl" --out "$out/eval_${name}_$tag.json" "$@" \
    > "$out/eval_${name}_$tag.log" 2>&1
  local rc=$?
  tail -n 1 "$out/eval_${name}_$tag.log"
  return $rc
}

pipeline() {  # OUT CORPUS [MTP_MINUTES]: every stage of the recipe, one after the other
  local out="$1" dir="$2" mtp_minutes="${3:-3}" eval=(--batch-size 64 --max-utterances "${EVAL_UTTERANCES:-1000}")
  local units=(--ctc-target-units "${CTC_UNITS:-characters}")
  local extra
  read -r -a extra <<< "${STAGE_FLAGS:-}"
  units+=(${extra[@]+"${extra[@]}"})
  # The evaluations score with optional packages: find them missing now, not after the trainings.
  $PYTHON -c "import sys; from megatron_salm_mtp.inference.wer import MISSING_PACKAGES, scoring_available as ok
sys.exit(0 if ok() else MISSING_PACKAGES)" || return 1
  if [ "${TEXT_MINUTES:-0}" -gt 0 ]; then
    text "$out" "$dir" txt "${units[@]}" --exit-duration-in-mins "$TEXT_MINUTES" && sleep 5 \
      && wait_all "$out" 1200 || return 1
    from_stage "$ENCODER_CONFIG" "$out" "$dir" enc txt "${units[@]}" \
      --exit-duration-in-mins $((${ENCODER_MINUTES:-8} - TEXT_MINUTES)) && sleep 5 && wait_all "$out" 1200 || return 1
  else
    encoder "$out" "$dir" enc "${units[@]}" --exit-duration-in-mins "${ENCODER_MINUTES:-8}" && sleep 5 \
      && wait_all "$out" 1200 || return 1
  fi
  local mix=()
  if [ "${TEXT_MIX:-0}" -gt 0 ]; then
    shuf -n "$TEXT_MIX" --random-source=<(yes) "$dir/train_text.jsonl" > "$out/text_mix.jsonl" || return 1
    mix=(--train-manifest "$dir/train.jsonl,$out/text_mix.jsonl")
  fi
  # JOINT_HEADS=D: D MTP heads learn alongside stage 2 from the trunk's detached states (its
  # gradients untouched: --mtp-detach-trunk), distilled from its own next-token distribution.
  local heads=()
  [ "${JOINT_HEADS:-0}" -gt 0 ] && heads=(--mtp-num-layers "$JOINT_HEADS" --mtp-detach-trunk
                                         --mtp-self-distillation --mtp-loss-scaling-factor 0.1)
  # TWO_ITERS=N: stage 2's cosine over N steps (the config's train_iters otherwise), stopped after
  # TWO_MINUTES (default 10, the config's) of training.
  local length=()
  [ -n "${TWO_ITERS:-}" ] && length=(--train-iters "$TWO_ITERS" --exit-duration-in-mins "${TWO_MINUTES:-10}")
  finetune "$out" "$dir" two enc "${units[@]}" ${mix[@]+"${mix[@]}"} ${heads[@]+"${heads[@]}"} \
    ${length[@]+"${length[@]}"} && sleep 5 && wait_all "$out" 1800 || return 1
  local ctc=(--ctc-greedy --ctc-joint-weight ${JOINT_WEIGHTS:-0.3} --ctc-beam-size ${BEAM_SIZES:-1 4}
             --lexicon "$dir/train.jsonl,$dir/train_text.jsonl" --lexicon-penalty ${LEXICON_PENALTIES:-2})
  [ "${CTC_UNITS:-characters}" = phonemes ] && ctc=()  # a phoneme head has no spelling to score
  evaluate "$out" "$dir" two greedy "${eval[@]}" --audio-ablation --group-by accent ${ctc[@]+"${ctc[@]}"}
  $PYTHON -m megatron_salm_mtp.tools.word_frequency_errors "$out/eval_two_greedy.json" \
    --train-manifest "$dir/train.jsonl" > "$out/eval_two_greedy_bands.txt" || return 1
  if [ "${JOINT_HEADS:-0}" -gt 0 ]; then
    speculative_evaluations "$out" "$dir" two "${eval[@]}" && echo "PIPELINE DONE (heads trained alongside)"
    return
  fi
  # A run about the trunk's WER alone: its heads and speculative figures wait for a trunk that moved.
  [ "$mtp_minutes" = 0 ] && { echo "PIPELINE DONE (MTP_MINUTES 0: no heads)"; return 0; }
  # The heads learn from the trunk as it decodes: no dropout there, whatever STAGE_FLAGS gave the trunk.
  finetune "$out" "$dir" two_mtp two "${units[@]}" --mtp-num-layers 3 --training-mode head_only \
    --hidden-dropout 0 --attention-dropout 0 --encoder-hidden-dropout 0 --encoder-attention-dropout 0 \
    --mtp-self-distillation --train-iters "${MTP_ITERS:-1100}" --exit-duration-in-mins "$mtp_minutes" \
    && sleep 5 && wait_all "$out" 1200 || return 1
  speculative_evaluations "$out" "$dir" two_mtp "${eval[@]}" && echo "PIPELINE DONE"
}

speculative_evaluations() {  # OUT CORPUS NAME [evaluate flags of batch 64]: greedy and speculative,
  # CUDA graphs, at each batch size of SPEC_BATCHES
  local out="$1" dir="$2" name="$3" batch spec=(--speculative --cuda-graphs)
  shift 3
  for batch in ${SPEC_BATCHES:-64 8 1}; do
    case "$batch" in
      64) evaluate "$out" "$dir" "$name" spec "$@" "${spec[@]}" ;;
      *) evaluate "$out" "$dir" "$name" "spec_b$batch" --batch-size "$batch" \
           --max-utterances $((batch == 1 ? 100 : 200)) "${spec[@]}" ;;
    esac
  done
}

probe() {  # OUT CORPUS MINUTES NAME[:FLAGS]...: encoder stages side by side, their CTC heads scored
  local out="$1" dir="$2" minutes="$3"; shift 3
  [ $# -ge 1 ] || { echo "probe: give at least one NAME[:FLAGS]" >&2; return 2; }
  local spec name flags names=()
  for spec in "$@"; do
    name="${spec%%:*}"; flags=''
    [ "$name" != "$spec" ] && flags="${spec#*:}"
    local extra=()
    read -r -a extra <<< "$flags"
    encoder "$out" "$dir" "$name" --exit-duration-in-mins "$minutes" ${extra[@]+"${extra[@]}"} || return 1
    names+=("$name")
  done
  sleep 5 && wait_all "$out" $((minutes * 60 + 600)) || return 1
  for name in "${names[@]}"; do
    evaluate "$out" "$dir" "$name" ctc --batch-size 64 --max-utterances "${EVAL_UTTERANCES:-1000}" --group-by accent \
      || return 1
  done
  for name in "${names[@]:1}"; do
    echo "CTC head alone, ${names[0]} (A) against $name (B):"
    $PYTHON -m megatron_salm_mtp.tools.compare_evals --mode ctc_greedy "$out/eval_${names[0]}_ctc.json" \
      "$out/eval_${name}_ctc.json" || return 1
  done
  echo "PROBE DONE"
}

case "$stage" in
  corpus) corpus "$@" ;;
  start) start "$@" ;;
  encoder) encoder "$@" ;;
  text) text "$@" ;;
  finetune) finetune "$@" ;;
  wait) wait_all "$@" ;;
  evaluate) evaluate "$@" ;;
  pipeline) pipeline "$@" ;;
  probe) probe "$@" ;;
  *) echo "unknown stage $stage: corpus, start, encoder, text, finetune, wait, evaluate, pipeline or probe" >&2; exit 2 ;;
esac
