#!/usr/bin/env bash
# GPU runs behind the figures in README/docs: `bash tests/gpu/runs.sh STEP OUT_DIR [CORPUS_DIR]`.
# Steps: one (a single benchmark: OUT NAME NPROC FLAGS...), check (TE bf16 1 GPU vs TP2+SP, wgrad fusion
# on/off), bench1 (1 GPU benchmarks), perf (memory/speed levers, 4 GPUs side by side), bench2 (2 GPUs,
# one run at a time), fusion_ab (wgrad fusion A/B on 2 GPUs), tp2_probe (TP=2 profile, micro-batch 8
# vs 16), benchN (1 GPU, DP=2, TP=2, TP2xPP2, TP2xDP2: MFU and scaling), syncs_ab (host round trips
# removed: before/after), levers16 (micro-batch 16: FP8, MTP recompute, DP=2, TP2xPP2), p2p_ab
# (TP2xPP2 with/without the device sync after pipeline sends), dp2_ab (overlap on/off), train / train4
# (training, save and resume), fused_ce (fused linear + CE head beside head chunks, 1 GPU), cuda_graphs
# (eager vs graphed layers, 1 GPU; the third argument names the implementation), packing (padded vs
# packed rows of a realistic length mix, 1 GPU). Each writes logs under OUT_DIR.
set -uo pipefail
step="$1"; out="$2"; corpus="${3:-}"
mkdir -p "$out"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PYTHONWARNINGS=ignore
# The 1B-class LLM (Qwen3-1.7B shape) + Whisper-small encoder, as in docs/design.md.
ONE_B=(--num-layers 28 --hidden-size 2048 --ffn-hidden-size 6144 --num-attention-heads 16
       --num-query-groups 8 --kv-channels 128 --qk-layernorm --rotary-base 1000000
       --encoder-num-layers 12 --encoder-hidden-size 768 --encoder-num-attention-heads 12
       --num-mel-bins 80 --audio-frame-stack 4 --seq-length 1024 --bf16
       --make-vocab-size-divisible-by 128 --lr 1e-4 --min-lr 1e-5 --lr-warmup-iters 5)
bench() { # name nproc args...
  local name="$1" n="$2"; shift 2
  echo "== $name" | tee -a "$out/bench.log"
  python3 -m torch.distributed.run --nproc-per-node "$n" --master-port $((29000 + BASHPID % 1000)) -m megatron_salm_mtp.tools.bench_train \
    "${ONE_B[@]}" --json "$out/$name.json" "$@" 2>"$out/$name.err" | grep -v '^\s*\(language_model\|audio_\)\|Params for' | tail -"${BENCH_TAIL:-6}" | tee -a "$out/bench.log"
}
case "$step" in
  one)  # one benchmark: runs.sh one OUT NAME NPROC FLAGS...
    shift 2; bench "$@" ;;
  fused_ce)  # --cross-entropy-fusion-impl linear beside head chunks of 1,024 rows, same weights and batches
    for mb in 8 16; do
      BENCH_TAIL=12 bench fused_ce_mb$mb 1 --warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 \
        --head-chunk-rows 1024 --micro-batch-size $mb --global-batch-size $mb --compare-cross-entropy-fusion
    done ;;
  cuda_graphs)  # eager vs graphed layers (runs.sh cuda_graphs OUT [local|transformer_engine]), same weights and batches
    for mb in 8 16; do
      BENCH_TAIL=12 bench graphs_${corpus:-local}_mb$mb 1 --warmup-iters 4 --timed-iters 8 --vocab-size 151936 \
        --mtp-num-layers 2 --head-chunk-rows 1024 --micro-batch-size $mb --global-batch-size $mb \
        --no-pack-sequences --cuda-graph-impl "${corpus:-local}" --compare-cuda-graphs --profile-dir "$out/profile_graphs_${corpus:-local}_mb$mb"
    done ;;
  packing)  # padded vs packed rows of one read-speech length mix (1-30 s), 1 GPU, TE (THD): docs/performance.md
    BENCH_TAIL=12 bench packing 1 --warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 \
      --head-chunk-rows 1024 --micro-batch-size 8 --global-batch-size 8 --max-duration 30 --compare-packing ;;
  check)
    python3 -m tests.gpu.te_check --out /tmp/te_check 2>&1 | grep -v Warn | tail -4 | tee "$out/te_check.log" ;;
  bench1)
    bench llm152k_naive 1 --text-only --vocab-size 151936 --micro-batch-size 8 --global-batch-size 8 --mtp-num-layers 2 --full-sequence-logits
    bench salm152k_naive 1 --vocab-size 151936 --micro-batch-size 8 --global-batch-size 8 --mtp-num-layers 2 --full-sequence-logits
    bench salm152k 1 --vocab-size 151936 --micro-batch-size 8 --global-batch-size 8 --mtp-num-layers 2
    bench salm32k 1 --vocab-size 32000 --micro-batch-size 8 --global-batch-size 8 --mtp-num-layers 3 ;;
  perf)  # the memory and speed levers of docs/performance.md, 4 single-GPU benches at a time
    on_gpu() { local gpu="$1" name="$2"; shift 2; CUDA_VISIBLE_DEVICES="$gpu" bench "$name" 1 "$@"; }
    fast=(--warmup-iters 2 --timed-iters 6 --vocab-size 151936 --micro-batch-size 8 --global-batch-size 8)
    on_gpu 0 p152k_rows "${fast[@]}" --mtp-num-layers 2 --profile-dir "$out/profile" &
    on_gpu 1 p152k_chunk "${fast[@]}" --mtp-num-layers 2 --head-chunk-rows 1024 &
    on_gpu 2 p152k_chunk_recompute "${fast[@]}" --mtp-num-layers 2 --head-chunk-rows 1024 --mtp-recompute &
    on_gpu 3 p152k_text_only "${fast[@]}" --text-only --mtp-num-layers 2 --head-chunk-rows 1024 &
    wait
    on_gpu 0 p32k_chunk_recompute "${fast[@]}" --vocab-size 32000 --mtp-num-layers 3 --head-chunk-rows 1024 --mtp-recompute &
    on_gpu 1 p152k_fp8 "${fast[@]}" --mtp-num-layers 2 --head-chunk-rows 1024 --fp8-format hybrid &
    on_gpu 2 p152k_chunk512 "${fast[@]}" --mtp-num-layers 2 --head-chunk-rows 512 --mtp-recompute &
    wait ;;
  benchN)  # 2-GPU benches side by side (GPUs 0-1, 2-3) with the 1-GPU baseline, then 4-GPU layouts;
    # scaling efficiency = tokens/s per GPU of a layout / tokens/s of one GPU, from these runs
    multi=(--warmup-iters 2 --timed-iters 6 --vocab-size 151936 --micro-batch-size 8 --mtp-num-layers 2 --head-chunk-rows 1024)
    CUDA_VISIBLE_DEVICES=0,1 bench salm152k_tp2 2 "${multi[@]}" --global-batch-size 16 --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer --profile-dir "$out/profile_tp2" &
    CUDA_VISIBLE_DEVICES=2,3 bench salm152k_dp2 2 "${multi[@]}" --global-batch-size 32 --use-distributed-optimizer &
    wait
    CUDA_VISIBLE_DEVICES=0,1 bench salm152k_dp2_overlap 2 "${multi[@]}" --global-batch-size 32 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather &
    CUDA_VISIBLE_DEVICES=2 bench salm152k_gpu1 1 "${multi[@]}" --global-batch-size 16 &
    wait
    bench salm152k_tp2pp2 4 "${multi[@]}" --global-batch-size 32 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer
    bench salm152k_tp2dp2 4 "${multi[@]}" --global-batch-size 32 --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer --overlap-grad-reduce ;;
  bench2)  # one 2-GPU host, one run at a time (clean figures): the 1-GPU baseline with and without
    # gradient accumulation fusion, DP=2 with the distributed optimizer and overlapped reduce/gather,
    # TP=2 + SP profiled. Two microbatches of 8 per rank and step in every layout. BENCH2_PART=one|multi
    # runs the 1-GPU or the 2-GPU half (each fits a 10-minute slot).
    multi=(--warmup-iters 2 --timed-iters 6 --vocab-size 151936 --micro-batch-size 8 --mtp-num-layers 2 --head-chunk-rows 1024)
    if [ "${BENCH2_PART:-all}" != multi ]; then
      CUDA_VISIBLE_DEVICES=0 bench salm152k_gpu1 1 "${multi[@]}" --global-batch-size 16 --profile-dir "$out/profile_gpu1"
      CUDA_VISIBLE_DEVICES=0 bench salm152k_gpu1_unfused 1 "${multi[@]}" --global-batch-size 16 --no-gradient-accumulation-fusion
    fi
    [ "${BENCH2_PART:-all}" = one ] && exit 0
    bench salm152k_dp2_overlap 2 "${multi[@]}" --global-batch-size 32 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather
    bench salm152k_tp2 2 "${multi[@]}" --global-batch-size 16 --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer --profile-dir "$out/profile_tp2" ;;
  fusion_ab)  # gradient accumulation fusion on/off, D=0, side by side on GPUs 0/1, then swapped
    ab=(--warmup-iters 3 --timed-iters 12 --vocab-size 151936 --micro-batch-size 8 --global-batch-size 16 --head-chunk-rows 1024)
    for round in 1 2; do
      first=$((round - 1)); second=$((2 - round))
      CUDA_VISIBLE_DEVICES=$first bench "fused_r$round" 1 "${ab[@]}" &
      CUDA_VISIBLE_DEVICES=$second bench "unfused_r$round" 1 "${ab[@]}" --no-gradient-accumulation-fusion &
      wait
    done ;;
  tp2_probe)  # why TP=2 is slow: GPU busy share at micro-batch 8 x 2 (profiled), with
    # CUDA_DEVICE_MAX_CONNECTIONS=1, and at 16 x 1 (half the launches per sample); 1 GPU at 16 x 1
    probe=(--warmup-iters 2 --timed-iters 6 --vocab-size 151936 --head-chunk-rows 1024 --global-batch-size 16)
    tp2=(--tensor-model-parallel-size 2 --sequence-parallel)
    bench tp2_mb8 2 "${probe[@]}" "${tp2[@]}" --micro-batch-size 8 --profile-dir "$out/profile_tp2"
    CUDA_DEVICE_MAX_CONNECTIONS=1 bench tp2_mb8_1conn 2 "${probe[@]}" "${tp2[@]}" --micro-batch-size 8
    bench tp2_mb16 2 "${probe[@]}" "${tp2[@]}" --micro-batch-size 16
    CUDA_VISIBLE_DEVICES=0 bench gpu1_mb16 1 "${probe[@]}" --micro-batch-size 16
    for f in "$out"/profile_tp2/*.txt; do echo "== $f"; head -22 "$f" | cut -c1-72,126-166; done ;;
  syncs_ab)  # host round trips removed (host_inputs.py): before (BEFORE_TREE, a checkout of the
    # earlier commit) and after side by side on GPUs 0-3 (8 x 2 and 16 x 1), then swapped; SYNCS_PART=tp
    # runs TP=2 before/after at 16 x 1 side by side, TP=2 at 32 x 1, and TP=2 x PP=2 on 4 GPUs
    ab=(--warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 --head-chunk-rows 1024)
    before() { local gpus="$1"; shift; (cd "$BEFORE_TREE" && CUDA_VISIBLE_DEVICES="$gpus" bench "$@"); }
    after() { local gpus="$1"; shift; CUDA_VISIBLE_DEVICES="$gpus" bench "$@"; }
    if [ "${SYNCS_PART:-one}" = one ]; then
      for round in 1 2; do
        a=$((round - 1)); b=$((2 - round)); c=$((round + 1)); d=$((4 - round))
        before $a "before_mb8_r$round" 1 "${ab[@]}" --micro-batch-size 8 --global-batch-size 16 &
        after $b "after_mb8_r$round" 1 "${ab[@]}" --micro-batch-size 8 --global-batch-size 16 &
        before $c "before_mb16_r$round" 1 "${ab[@]}" --micro-batch-size 16 --global-batch-size 16 &
        after $d "after_mb16_r$round" 1 "${ab[@]}" --micro-batch-size 16 --global-batch-size 16 &
        wait
      done
    else
      tp2=("${ab[@]}" --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer)
      before 0,1 before_tp2_mb16 2 "${tp2[@]}" --micro-batch-size 16 --global-batch-size 16 &
      after 2,3 after_tp2_mb16 2 "${tp2[@]}" --micro-batch-size 16 --global-batch-size 16 &
      wait
      after 0,1 after_tp2_mb32 2 "${tp2[@]}" --micro-batch-size 32 --global-batch-size 32 &
      after 2,3 after_tp2_mb16_syncs 2 "${tp2[@]}" --micro-batch-size 16 --global-batch-size 16 --list-host-syncs &
      wait
      after 0,1,2,3 after_tp2pp2_mb16 4 "${tp2[@]}" --pipeline-model-parallel-size 2 --micro-batch-size 16 --global-batch-size 64
    fi ;;
  levers16)  # micro-batch 16 on a 4x H200 host: FP8 and MTP recompute (GPUs 0, 1) beside DP=2 with the
    # distributed optimizer and overlapped reduce/gather (GPUs 2-3); then TP=2 x PP=2 with 8 microbatches
    l16=(--warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 --head-chunk-rows 1024 --micro-batch-size 16)
    CUDA_VISIBLE_DEVICES=0 bench mb16_fp8 1 "${l16[@]}" --global-batch-size 16 --fp8-format hybrid &
    CUDA_VISIBLE_DEVICES=1 bench mb16_mtp_recompute 1 "${l16[@]}" --global-batch-size 16 --mtp-recompute &
    CUDA_VISIBLE_DEVICES=2,3 bench dp2_mb16 2 "${l16[@]}" --global-batch-size 32 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather &
    wait
    bench tp2pp2_mb16_gbs128 4 "${l16[@]}" --global-batch-size 128 --tensor-model-parallel-size 2 \
      --pipeline-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer ;;
  p2p_ab)  # TP=2 x PP=2 on 4 GPUs with core's device sync after each batched p2p exchange
    # (--batch-p2p-sync, before) and without (the default, after); losses of both must agree
    p2p=(--warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 --head-chunk-rows 1024
         --micro-batch-size 16 --global-batch-size 64 --tensor-model-parallel-size 2
         --pipeline-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer --list-host-syncs)
    bench tp2pp2_p2p_sync 4 "${p2p[@]}" --batch-p2p-sync
    bench tp2pp2_no_p2p_sync 4 "${p2p[@]}" ;;
  dp2_ab)  # DP=2 with the distributed optimizer: overlapped grad reduce + param gather on (GPUs 0-1)
    # and off (GPUs 2-3) side by side, 16 x 1 per rank
    dp2=(--warmup-iters 3 --timed-iters 8 --vocab-size 151936 --mtp-num-layers 2 --head-chunk-rows 1024
         --micro-batch-size 16 --global-batch-size 32 --use-distributed-optimizer)
    CUDA_VISIBLE_DEVICES=0,1 bench dp2_overlap 2 "${dp2[@]}" --overlap-grad-reduce --overlap-param-gather &
    CUDA_VISIBLE_DEVICES=2,3 bench dp2_no_overlap 2 "${dp2[@]}" &
    wait ;;
  train)
    common=(--config configs/tiny_cpu.yaml --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl"
            --eval-interval 50 --eval-iters 2 --log-interval 10)
    python3 -m torch.distributed.run --nproc-per-node 1 -m megatron_salm_mtp.train "${common[@]}" --train-iters 100 --log-dir "$out/tiny_full" > "$out/tiny_full.log" 2>&1
    python3 -m torch.distributed.run --nproc-per-node 1 -m megatron_salm_mtp.train "${common[@]}" --train-iters 100 --save /tmp/ckpt_tiny --overwrite-save --exit-interval 50 --log-dir "$out/tiny_resume" > "$out/tiny_part1.log" 2>&1
    python3 -m torch.distributed.run --nproc-per-node 1 -m megatron_salm_mtp.train "${common[@]}" --train-iters 100 --load /tmp/ckpt_tiny --save /tmp/ckpt_tiny --log-dir "$out/tiny_resume" > "$out/tiny_part2.log" 2>&1
    grep -h "iteration " "$out"/tiny_full.log | tail -3; grep -h "iteration " "$out"/tiny_part2.log | tail -3
    python3 -m torch.distributed.run --nproc-per-node 2 -m megatron_salm_mtp.train "${common[@]}" "${ONE_B[@]}" --tensor-model-parallel-size 2 --sequence-parallel \
      --mtp-num-layers 2 --micro-batch-size 4 --global-batch-size 16 --train-iters 60 --use-distributed-optimizer --log-dir "$out/b1_tp2" > "$out/b1_tp2.log" 2>&1
    grep -h "iteration " "$out/b1_tp2.log" | tail -6 ;;
  train4)  # 1B-class SALM, D=2, TE, TP=2 x PP=2 with the distributed optimizer on 4 GPUs: 210 steps
    # with a save at 200; resume from it on the same layout (steps 201-210 must match); load it at
    # TP=2 x PP=1 x DP=2 (the step-201 loss must be close: other layout, same weights)
    common=(--config configs/tiny_cpu.yaml --train-manifest "$corpus/train.jsonl" --valid-manifest "$corpus/valid.jsonl"
            "${ONE_B[@]}" --mtp-num-layers 2 --micro-batch-size 4 --global-batch-size 16 --num-workers 6
            --use-distributed-optimizer --sequence-parallel --tensor-model-parallel-size 2 --eval-interval 50
            --eval-iters 2 --log-interval 10 --lr 2e-4 --lr-warmup-iters 10 --train-iters 210)
    torchrun4() { python3 -m torch.distributed.run --nproc-per-node 4 --master-port $((29000 + RANDOM % 1000)) -m megatron_salm_mtp.train "$@"; }
    torchrun4 "${common[@]}" --pipeline-model-parallel-size 2 --save /tmp/ckpt_b1 --overwrite-save --save-interval 200 \
      --log-dir "$out/b1_tp2pp2" > "$out/b1_tp2pp2.log" 2>&1
    echo 200 > /tmp/ckpt_b1/latest_checkpointed_iteration.txt  # roll back past the end-of-run save at 210
    torchrun4 "${common[@]}" --pipeline-model-parallel-size 2 --load /tmp/ckpt_b1 --log-dir "$out/b1_tp2pp2_resume" \
      > "$out/b1_tp2pp2_resume.log" 2>&1
    torchrun4 "${common[@]}" --pipeline-model-parallel-size 1 --load /tmp/ckpt_b1 --train-iters 203 --log-interval 1 \
      --log-dir "$out/b1_tp2dp2" > "$out/b1_tp2dp2.log" 2>&1
    for name in b1_tp2pp2 b1_tp2pp2_resume b1_tp2dp2; do echo "== $name"; grep -h "iteration " "$out/$name.log" | tail -4; done ;;
esac
