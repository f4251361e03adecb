"""The SALM's model and parallel configuration: Megatron-LM names, one docstring per field.

``validate()`` runs before any process group or tensor exists and names the offending flag, so a
configuration that cannot work fails in the first second, not after a model build.
"""

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .config_checks import ConfigError, at_least, check_types, did_you_mean, flag, one_of, positive
from .data.ctc_text import CTC_CHARACTERS, CTC_TARGET_UNITS

TRAINING_MODES = ('joint', 'head_only', 'freeze_llm', 'encoder_ctc')
"""``--training-mode`` choices (model/freeze.py says what each trains)."""

# The values a field takes (None: unset), for validate() and --help.
CHOICES = {
    'position_embedding_type': ('rope', 'learned_absolute'),
    'transformer_impl': (None, 'transformer_engine', 'local'),
    'fp8_format': (None, 'e4m3', 'hybrid'),
    'moe_token_dispatcher_type': ('allgather', 'alltoall'),
    'moe_router_load_balancing_type': ('aux_loss', 'seq_aux_loss', 'none'),
    'ctc_target_units': CTC_TARGET_UNITS,
    'lr_decay_style': ('constant', 'linear', 'cosine', 'inverse-square-root'),
    'training_mode': TRAINING_MODES,
    'cross_entropy_fusion_impl': ('native', 'te', 'linear'),
    'cuda_graph_impl': ('none', 'local', 'transformer_engine'),
}
CUDA_GRAPH_SCOPES = ('attn', 'mlp', 'moe_router', 'moe_preprocess')
"""``--cuda-graph-scope`` parts Megatron-Core can graph in these layers (its ``moe`` part needs
drop-and-pad experts, its ``full_iteration`` a static whole step: neither fits the SALM)."""

_AT_LEAST_ONE = ('num_layers', 'hidden_size', 'ffn_hidden_size', 'num_attention_heads', 'num_query_groups',
                 'kv_channels', 'vocab_size', 'make_vocab_size_divisible_by', 'seq_length', 'encoder_num_layers',
                 'encoder_hidden_size', 'encoder_num_attention_heads', 'encoder_ffn_hidden_size',
                 'encoder_max_source_positions', 'audio_frame_stack', 'tensor_model_parallel_size',
                 'pipeline_model_parallel_size', 'expert_model_parallel_size', 'num_experts',
                 'moe_ffn_hidden_size')


@dataclass
class SALMConfig:
    # --- LLM (GPTModel) ---
    num_layers: int = 2
    """Decoder layers of the LLM."""
    hidden_size: int = 64
    """LLM width."""
    ffn_hidden_size: int = 176
    """SwiGLU inner width (per branch)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: Optional[int] = 2
    """Key/value heads (grouped-query attention); None means as many as query heads."""
    kv_channels: Optional[int] = None
    """Head dimension; None means hidden_size / num_attention_heads."""
    qk_layernorm: bool = False
    """RMSNorm on queries and keys per head (Qwen3)."""
    add_qkv_bias: bool = False
    """Bias on the QKV projection (Qwen2)."""
    untie_embeddings_and_output_weights: bool = False
    """Separate output head instead of the tied word embedding."""
    vocab_size: int = 272
    """Tokenizer vocabulary (set from the tokenizer by the training entry point); padded to make_vocab_size_divisible_by x TP for the model."""
    make_vocab_size_divisible_by: Optional[int] = 128
    """Pad the vocabulary to a multiple of this times the TP size (Megatron's convention); None
    keeps it exact (e.g. to match a checkpoint), and it must then be divisible by TP."""
    seq_length: int = 256
    """Tokens per sample (text + audio placeholders), fixed under pipeline parallelism."""
    position_embedding_type: str = 'rope'
    """rope (required with MTP) or learned_absolute."""
    rotary_base: float = 10000.0
    """RoPE theta (1e6 for Qwen3)."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon of the LLM."""
    init_method_std: float = 0.02
    """Std of the normal weight initialisation."""

    # --- Multi-token prediction ---
    mtp_num_layers: Optional[int] = None
    """MTP depths D (None or 0: no MTP)."""
    mtp_loss_scaling_factor: float = 0.1
    """lambda: the MTP term is lambda / D times the sum of per-depth mean losses."""
    mtp_use_repeated_layer: bool = False
    """One MTP layer whose weights serve all D depths (Nemotron-3 Super's shared head)."""
    mtp_layer_pattern: str = '*-'
    """Sub-layers of each MTP depth: '*' attention, '-' dense MLP, 'E' MoE MLP ('*-', '*E' or '*';
    NeMo's 'E' alone means attention + MoE)."""
    full_sequence_logits: bool = False
    """Compute head logits at every position, as core does (default: supervised positions only)."""
    head_chunk_rows: int = 0
    """Rows per chunk of LM head + cross-entropy (main head and each MTP depth); each chunk's
    logits are recomputed in backward, so head memory is one chunk's. 0: one pass, logits kept."""
    cross_entropy_loss_fusion: bool = True
    """Fused cross-entropy in the LM heads (Megatron-LM's flag; on by default here), of the kind
    --cross-entropy-fusion-impl names; off: core's unfused vocab-parallel cross-entropy."""
    cross_entropy_fusion_impl: str = 'te'
    """te (Transformer Engine's vocab-parallel cross-entropy) or native (Megatron-Core's fused
    one) over the head's logits, both with the TE spec on a GPU (core's unfused one elsewhere);
    linear: the output layer and the cross-entropy fused (model/linear_ce.py) for the main head
    and every MTP head, on every device: no logits tensor is held (Triton on CUDA, torch chunks
    elsewhere), which replaces --head-chunk-rows. Megatron-LM's names and choices."""
    mtp_recompute: bool = False
    """Recompute each MTP depth's layer in backward instead of keeping its activations."""
    mtp_mask_placeholder_paths: bool = True
    """Drop depth-k targets whose chain consumes an audio placeholder (Megatron-LM #6770)."""
    mtp_detach_trunk: bool = False
    """Train the MTP layers without letting their loss reach the rest of the model: the trunk's
    hidden states, the word embedding and the output head enter MTP detached, so everything else
    trains exactly as without MTP (heads learnt alongside, at no cost to the main model)."""
    mtp_self_distillation: bool = False
    """Train the MTP heads on the KL from the trunk's own next-token distribution (depth k at
    position i: the main head at i+k) instead of the ground-truth tokens, as EAGLE and FastMTP
    do; meant for --training-mode head_only (frozen trunk, fixed teacher). The logged mtp_k loss
    is then that KL."""

    # --- Mixture of experts (the MTP layers of --mtp-layer-pattern E) ---
    num_experts: Optional[int] = None
    """Routed experts of each MoE layer; None: no MoE."""
    moe_router_topk: int = 2
    """Experts each token is routed to (softmax over the top-k router logits)."""
    moe_ffn_hidden_size: Optional[int] = None
    """SwiGLU inner width (per branch) of each expert; None means ffn_hidden_size."""
    expert_model_parallel_size: int = 1
    """EP size: experts are split over this many data-parallel ranks."""
    moe_token_dispatcher_type: str = 'allgather'
    """How tokens reach their experts' ranks: allgather or alltoall."""
    moe_router_load_balancing_type: str = 'aux_loss'
    """aux_loss (Switch), seq_aux_loss (DeepSeek-V2, per sequence) or none."""
    moe_aux_loss_coeff: float = 0.0
    """Weight of the load-balancing loss (0: none)."""
    moe_grouped_gemm: bool = False
    """All local experts in one grouped GEMM (Transformer Engine only); else one GEMM per expert."""

    # --- Audio encoder (Whisper-shaped) and projector ---
    num_mel_bins: int = 80
    """Log-mel bins of the input features."""
    encoder_num_layers: int = 2
    """Audio encoder layers."""
    encoder_hidden_size: int = 64
    """Audio encoder width."""
    encoder_num_attention_heads: int = 4
    """Audio encoder heads."""
    encoder_ffn_hidden_size: Optional[int] = None
    """Audio encoder GELU MLP width; None means 4 x encoder_hidden_size."""
    encoder_max_source_positions: int = 1500
    """Sinusoidal positions after the stride-2 stem (1500 = 30 s, as Whisper)."""
    audio_frame_stack: int = 4
    """Encoder frames stacked into one LLM token (4: 50 Hz -> 12.5 Hz)."""
    audio_token_id: int = 259
    """Placeholder id that input_ids carry once per audio token."""
    freeze_audio_encoder: bool = False
    """Keep the audio encoder's weights fixed."""

    # --- CTC on the audio encoder (model/ctc.py) ---
    ctc_loss_weight: float = 0.0
    """w of the auxiliary CTC loss on the audio encoder: a linear CTC head (vocabulary + blank) on
    the 50 Hz encoder output, targets the answer text's token ids; the objective gains w x summed
    CTC / CTC target tokens of the global batch. 0: no CTC head (checkpoints as before). With
    --training-mode encoder_ctc any value > 0 only builds the head: the CTC loss is the objective."""
    ctc_target_units: str = 'tokens'
    """What the CTC head emits: the tokenizer's ids (tokens) or characters (38 of them: letters,
    digits, apostrophe, space; far fewer classes, so the encoder leaves CTC's blank plateau sooner)."""

    # --- Parallelism and precision ---
    tensor_model_parallel_size: int = 1
    """TP size."""
    pipeline_model_parallel_size: int = 1
    """PP size: audio encoder and projector on the first stage, MTP on the last."""
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per PP rank (interleaved 1F1B: a smaller pipeline bubble for more
    point-to-point traffic); None or 1: one chunk per rank."""
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    """LLM decoder layers per model chunk: sets the virtual pipeline size as
    num_layers / PP / this (Megatron-LM's alternative to the flag above)."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations along the sequence over the TP group."""
    batch_p2p_sync: bool = False
    """Synchronise the whole GPU after each batched pipeline send/receive (Megatron-Core's
    default, a guard for a PyTorch bug long fixed): it stalls the host several times per
    microbatch, so it is off here."""
    bf16: bool = False
    """bfloat16 parameters and compute (fp32 main params in the optimiser)."""
    fp8_format: Optional[str] = None
    """e4m3 or hybrid: the LLM's and MTP layers' GEMMs in FP8 through Transformer Engine (delayed
    scaling); heads, audio encoder and projector stay in bf16."""
    transformer_impl: Optional[str] = None
    """transformer_engine or local; None picks TE when importable with CUDA."""
    gradient_accumulation_fusion: bool = True
    """Accumulate weight gradients into the fp32 main gradients inside the weight-gradient GEMM
    (Transformer Engine's layers; Megatron-LM's default). No effect with the local spec."""

    # --- CUDA graphs (training) ---
    cuda_graph_impl: str = 'none'
    """CUDA graphs of the LLM's and MTP's transformer layers in training (Megatron-LM's flag):
    local (Megatron-Core's graph manager: the first step runs eagerly and records, graphs are
    built at its end) or transformer_engine (TE's make_graphed_callables through core's helper,
    captured after --cuda-graph-warmup-steps eager steps); none: eager. Needs fixed shapes
    (--pad-to-seq-length) and a GPU. The audio encoder stays eager (its shapes follow the audio)."""
    cuda_graph_scope: Optional[str] = None
    """What each layer's graph covers, comma-separated: attn, mlp, moe_router, moe_preprocess
    (Megatron-LM's names); unset: the whole layer."""
    cuda_graph_warmup_steps: int = 3
    """Eager training steps before transformer_engine captures its graphs; with local, the eager
    runs of each graph before its capture (Megatron-LM's flag)."""

    @property
    def padded_vocab_size(self) -> int:
        if self.make_vocab_size_divisible_by is None:
            return self.vocab_size
        multiple = self.make_vocab_size_divisible_by * self.tensor_model_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    @property
    def mtp_depths(self) -> int:
        return self.mtp_num_layers or 0

    @property
    def ctc_enabled(self) -> bool:
        """Whether the model has a CTC head on its audio encoder and trains it."""
        return self.ctc_loss_weight > 0

    @property
    def ctc_vocab_size(self) -> int:
        """Ids the CTC head emits besides its blank."""
        return len(CTC_CHARACTERS) if self.ctc_target_units == 'characters' else self.vocab_size

    @property
    def virtual_pipeline_size(self) -> Optional[int]:
        """Model chunks per PP rank when interleaving is on (from either flag), else None."""
        layers = self.num_layers_per_virtual_pipeline_stage
        if layers:
            chunks = self.num_layers // self.pipeline_model_parallel_size // layers
        else:
            chunks = self.virtual_pipeline_model_parallel_size
        return chunks if chunks and chunks > 1 else None

    def validate(self, world_size: Optional[int] = None, num_microbatches: Optional[int] = None,
                 vocabulary: bool = True) -> None:
        """``num_microbatches`` (per DP rank and global batch), when known, is checked against
        the interleaved schedule; ``vocabulary=False`` before the tokenizer has set it."""
        self._validate_values()
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if world_size is not None and world_size % (tp * pp):
            raise ConfigError(f"world size {world_size} is not divisible by "
                              f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp}")
        groups = self.num_query_groups or self.num_attention_heads
        split = [('num_attention_heads', self.num_attention_heads), ('num_query_groups', groups),
                 ('encoder_num_attention_heads', self.encoder_num_attention_heads)]
        for name, value in split + ([('vocab_size', self.padded_vocab_size)] if vocabulary else []):
            if value % tp:
                raise ConfigError(f"{flag(name)}: {name}={value} is not divisible by "
                                  f"--tensor-model-parallel-size {tp}")
        if self.num_attention_heads % groups:
            raise ConfigError(f"--num-attention-heads {self.num_attention_heads} is not divisible by "
                              f"--num-query-groups {groups}")
        if self.num_layers % pp:
            raise ConfigError(f"--num-layers {self.num_layers} is not divisible by "
                              f"--pipeline-model-parallel-size {pp}")
        self._validate_virtual_pipeline(num_microbatches)
        if self.mtp_depths and self.position_embedding_type != 'rope':
            raise ConfigError(f"--mtp-num-layers needs --position-embedding-type rope (got "
                              f"{self.position_embedding_type!r}): learned absolute positions are "
                              "claimed by both the first and the MTP stage under PP")
        if self.mtp_layer_pattern not in ('*-', '*', '*E', 'E'):
            raise ConfigError(f"--mtp-layer-pattern {self.mtp_layer_pattern!r}: choose '*-' (attention + "
                              "MLP), '*E' or 'E' (attention + MoE) or '*' (attention only)")
        self._validate_moe(world_size)
        if self.sequence_parallel and tp == 1:
            raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1")
        if self.head_chunk_rows < 0:
            raise ConfigError(f"--head-chunk-rows {self.head_chunk_rows}: use 0 (off) or a positive row count")
        self._validate_cross_entropy_fusion()
        if self.mtp_self_distillation and not self.mtp_depths:
            raise ConfigError("--mtp-self-distillation needs MTP heads (--mtp-num-layers)")
        if self.mtp_recompute and not self.mtp_depths:
            raise ConfigError("--mtp-recompute needs --mtp-num-layers > 0")
        if self.mtp_detach_trunk and not self.mtp_depths:
            raise ConfigError("--mtp-detach-trunk needs --mtp-num-layers > 0")
        one_of(self, 'fp8_format', CHOICES['fp8_format'])
        if self.fp8_format and not self.bf16:
            raise ConfigError("--fp8-format needs --bf16 (FP8 GEMMs inside a bf16 model)")
        if self.sequence_parallel and self.seq_length % tp:
            raise ConfigError(f"--seq-length {self.seq_length} is not divisible by "
                              f"--tensor-model-parallel-size {tp} (needed by --sequence-parallel)")
        if vocabulary and not 0 <= self.audio_token_id < self.vocab_size:
            raise ConfigError(f"--audio-token-id {self.audio_token_id} is outside the vocabulary "
                              f"(--vocab-size {self.vocab_size})")
        self._validate_ctc()
        self._validate_cuda_graphs()

    @property
    def cuda_graph_scopes(self) -> list:
        """--cuda-graph-scope as a list (empty: whole layers)."""
        return [part.strip() for part in (self.cuda_graph_scope or '').split(',') if part.strip()]

    def _validate_cuda_graphs(self) -> None:
        """What Megatron-Core's layer graphs need of the model: a GPU, scopes its layers have,
        and every graphed layer called once per microbatch with the autograd core records."""
        one_of(self, 'cuda_graph_impl', CHOICES['cuda_graph_impl'])
        impl, scopes = self.cuda_graph_impl, self.cuda_graph_scopes
        for part in scopes:
            if part not in CUDA_GRAPH_SCOPES:
                raise ConfigError(f"--cuda-graph-scope {part!r}: choose among {', '.join(CUDA_GRAPH_SCOPES)} "
                                  f"(comma-separated){did_you_mean(part, CUDA_GRAPH_SCOPES)}")
        if self.cuda_graph_warmup_steps < 0:
            raise ConfigError(f"--cuda-graph-warmup-steps must be >= 0, got {self.cuda_graph_warmup_steps}")
        if impl == 'none':
            if scopes:
                raise ConfigError("--cuda-graph-scope needs --cuda-graph-impl local or transformer_engine")
            return
        flag_impl = f"--cuda-graph-impl {impl}"
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag_impl} needs a CUDA device (this run has none)")
        if ('expandable_segments:True' in os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')
                and os.environ.get('NCCL_GRAPH_REGISTER') != '0'):
            raise ConfigError(f"{flag_impl} with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True needs "
                              "NCCL_GRAPH_REGISTER=0 in the environment (core's rule: illegal memory access)")
        if impl == 'transformer_engine' and (self.transformer_impl == 'local' or not self.bf16
                                             or importlib.util.find_spec('transformer_engine') is None):
            raise ConfigError(f"{flag_impl} needs Transformer Engine, --bf16 (core's helper captures "
                              "bf16 inputs) and no --transformer-impl local")
        if impl == 'transformer_engine' and self.pipeline_model_parallel_size > 1:
            raise ConfigError(f"{flag_impl} needs --pipeline-model-parallel-size 1: core's schedules pick "
                              "a microbatch's graph through GPTModel, which the SALM wraps (use local)")
        if impl == 'transformer_engine' and self.mtp_use_repeated_layer and self.mtp_depths > 1:
            raise ConfigError(f"{flag_impl} holds one graph per layer and microbatch; "
                              "--mtp-use-repeated-layer runs one layer per depth: use --cuda-graph-impl local")
        if self.mtp_recompute:
            raise ConfigError(f"{flag_impl} cannot graph layers that --mtp-recompute runs again in "
                              "backward (core graphs recomputation only in whole-step graphs): drop one")
        moe_parts = [part for part in scopes if part.startswith('moe')]
        if moe_parts and not self.num_experts:
            raise ConfigError(f"--cuda-graph-scope {','.join(moe_parts)} needs MoE layers (--num-experts)")
        if 'moe_preprocess' in scopes and 'moe_router' not in scopes:
            raise ConfigError("--cuda-graph-scope moe_preprocess needs moe_router beside it (core's rule)")
        if self.num_experts and not scopes:
            raise ConfigError(f"{flag_impl} with --num-experts: core graphs a whole MoE layer only with "
                              "drop-and-pad experts; give --cuda-graph-scope attn (and moe_router)")
        if 'mlp' in scopes and self.num_experts:
            raise ConfigError("--cuda-graph-scope mlp: with --num-experts core counts every layer as MoE "
                              "and graphs dense MLPs only: use moe_router")

    @property
    def fused_linear_cross_entropy(self) -> bool:
        """Whether the heads' loss runs through model/linear_ce.py."""
        return self.cross_entropy_loss_fusion and self.cross_entropy_fusion_impl == 'linear'

    def _validate_cross_entropy_fusion(self) -> None:
        one_of(self, 'cross_entropy_fusion_impl', CHOICES['cross_entropy_fusion_impl'])
        if self.cross_entropy_fusion_impl == 'linear' and not self.cross_entropy_loss_fusion:
            raise ConfigError("--cross-entropy-fusion-impl linear needs --cross-entropy-loss-fusion "
                              "(drop --no-cross-entropy-loss-fusion)")
        if self.fused_linear_cross_entropy and self.head_chunk_rows:
            raise ConfigError(f"--head-chunk-rows {self.head_chunk_rows} chunks the unfused head; "
                              "--cross-entropy-fusion-impl linear holds no logits already: drop one")

    def _validate_ctc(self) -> None:
        one_of(self, 'ctc_target_units', CHOICES['ctc_target_units'])
        if not self.ctc_loss_weight >= 0:  # also refuses NaN
            raise ConfigError(f"--ctc-loss-weight {self.ctc_loss_weight} must be >= 0 (0: off)")
        if self.ctc_enabled and self.freeze_audio_encoder:
            raise ConfigError("--ctc-loss-weight trains the audio encoder, which --freeze-audio-encoder "
                              "keeps fixed: drop one of them")

    def _validate_values(self) -> None:
        """Types, ranges and choices of single fields."""
        check_types(self)
        at_least(self, 1, _AT_LEAST_ONE)
        at_least(self, 0, ('mtp_num_layers', 'mtp_loss_scaling_factor'))
        positive(self, ('rotary_base', 'norm_epsilon', 'init_method_std'))
        one_of(self, 'position_embedding_type', CHOICES['position_embedding_type'])
        one_of(self, 'transformer_impl', CHOICES['transformer_impl'])
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                              f"{self.num_attention_heads} (or give the head size with --kv-channels)")
        if self.encoder_hidden_size % self.encoder_num_attention_heads:
            raise ConfigError(f"--encoder-hidden-size {self.encoder_hidden_size} is not divisible by "
                              f"--encoder-num-attention-heads {self.encoder_num_attention_heads}")

    @property
    def mtp_uses_experts(self) -> bool:
        return bool(self.mtp_depths) and 'E' in self.mtp_layer_pattern

    def _validate_moe(self, world_size: Optional[int]) -> None:
        ep = self.expert_model_parallel_size
        if 'E' in self.mtp_layer_pattern and not self.num_experts:
            raise ConfigError(f"--mtp-layer-pattern {self.mtp_layer_pattern!r} (MoE) needs --num-experts")
        if self.num_experts is None:
            if ep != 1:
                raise ConfigError(f"--expert-model-parallel-size {ep} needs --num-experts")
            return
        if not self.mtp_uses_experts:
            raise ConfigError(f"--num-experts {self.num_experts}: no layer uses experts (MoE MTP "
                              "layers need --mtp-num-layers and --mtp-layer-pattern E)")
        if self.num_experts % ep:
            raise ConfigError(f"--num-experts {self.num_experts} is not divisible by "
                              f"--expert-model-parallel-size {ep}")
        if not 1 <= self.moe_router_topk <= self.num_experts:
            raise ConfigError(f"--moe-router-topk {self.moe_router_topk} must be in 1..--num-experts "
                              f"{self.num_experts}")
        one_of(self, 'moe_token_dispatcher_type', CHOICES['moe_token_dispatcher_type'])
        one_of(self, 'moe_router_load_balancing_type', CHOICES['moe_router_load_balancing_type'])
        if self.moe_aux_loss_coeff < 0:
            raise ConfigError(f"--moe-aux-loss-coeff {self.moe_aux_loss_coeff} must be >= 0")
        if self.moe_grouped_gemm and self.transformer_impl == 'local':
            raise ConfigError("--moe-grouped-gemm needs --transformer-impl transformer_engine")
        # Experts keep the tensor-parallel split (expert TP = TP), so EP takes data-parallel ranks.
        model_parallel = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if world_size is not None and (world_size // model_parallel) % ep:
            raise ConfigError(f"--expert-model-parallel-size {ep} does not divide the data-parallel "
                              f"size {world_size // model_parallel} (world size {world_size} / "
                              f"(--tensor-model-parallel-size x --pipeline-model-parallel-size))")

    def _validate_virtual_pipeline(self, num_microbatches: Optional[int]) -> None:
        vp_flag = '--virtual-pipeline-model-parallel-size'
        layers_flag = '--num-layers-per-virtual-pipeline-stage'
        pp, vp = self.pipeline_model_parallel_size, self.virtual_pipeline_model_parallel_size
        layers, per_rank = self.num_layers_per_virtual_pipeline_stage, self.num_layers // pp
        if vp is not None and vp < 1:
            raise ConfigError(f"{vp_flag} must be >= 1, got {vp}")
        if layers is not None:
            if layers < 1 or per_rank % layers:
                raise ConfigError(f"{layers_flag} {layers} does not divide the {per_rank} decoder layers "
                                  f"of a pipeline rank (--num-layers {self.num_layers} / "
                                  f"--pipeline-model-parallel-size {pp})")
            if vp is not None and vp != per_rank // layers:
                raise ConfigError(f"{vp_flag} {vp} contradicts {layers_flag} {layers} ({per_rank} layers "
                                  f"per pipeline rank make {per_rank // layers} chunks): give one of them")
        chunks = self.virtual_pipeline_size
        if chunks is None:
            return
        if pp == 1:
            raise ConfigError(f"{vp_flag} / {layers_flag} (interleaved pipeline) need "
                              "--pipeline-model-parallel-size > 1")
        if self.num_layers % (pp * chunks):
            raise ConfigError(f"--num-layers {self.num_layers} is not divisible by "
                              f"--pipeline-model-parallel-size {pp} x {vp_flag} {chunks}")
        # Core's interleaved schedule runs microbatches in groups of PP per model chunk
        # (microbatch_group_size_per_vp_stage) and refuses a last, smaller group.
        if num_microbatches is not None and num_microbatches % pp:
            raise ConfigError(f"{vp_flag} {chunks} (interleaved pipeline) needs a number of "
                              f"microbatches that is a multiple of --pipeline-model-parallel-size {pp}; "
                              f"--global-batch-size / (--micro-batch-size x data-parallel size) gives "
                              f"{num_microbatches}")

    def replace(self, **changes) -> 'SALMConfig':
        return dataclasses.replace(self, **changes)

    def with_single_device_layout(self, tensor_model_parallel_size: int = 1) -> 'SALMConfig':
        """This model laid out for the tools that load a checkpoint whatever layout trained it
        (export, decoding, generate): one device, or ``tensor_model_parallel_size`` devices of
        one pipeline stage; one chunk per rank, no sequence parallelism."""
        return self.replace(**dict(SINGLE_DEVICE_LAYOUT, tensor_model_parallel_size=tensor_model_parallel_size))


SINGLE_DEVICE_LAYOUT = {'tensor_model_parallel_size': 1, 'pipeline_model_parallel_size': 1, 'sequence_parallel': False,
                        'virtual_pipeline_model_parallel_size': None, 'num_layers_per_virtual_pipeline_stage': None,
                        'cuda_graph_impl': 'none', 'cuda_graph_scope': None}
"""The layout fields (a launch's choice, not the model's) at their one-device values; training's
CUDA graphs are a launch's choice too, and the tools that load a checkpoint run eagerly."""


@dataclass
class TrainConfig:
    """Schedule, optimiser, logging and checkpoint settings (Megatron-LM names)."""
    # --- Training: schedule and optimizer ---
    train_iters: int = 100
    """Optimizer steps to run."""
    micro_batch_size: int = 4
    """Samples per microbatch per DP rank."""
    global_batch_size: int = 16
    """Samples per optimizer step over all DP ranks and microbatches."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay."""
    lr_decay_style: str = 'cosine'
    """constant, linear, cosine or inverse-square-root."""
    lr_warmup_iters: int = 0
    """Linear warm-up steps."""
    lr_decay_iters: Optional[int] = None
    """Steps of decay (None: train_iters)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    clip_grad: float = 1.0
    """Gradient-norm clipping (0: off)."""
    # --- Parallelism and precision ---
    use_distributed_optimizer: bool = False
    """Shard optimizer state (fp32 main params) over DP."""
    overlap_grad_reduce: bool = False
    """Overlap the DP gradient reduction with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the forward pass."""
    context_parallel_size: int = 1
    """Context parallelism (not supported yet: must be 1)."""
    # --- Logging and validation ---
    eval_interval: int = 50
    """Evaluate on the validation manifest every this many steps (0: never)."""
    eval_iters: int = 4
    """Global batches per evaluation."""
    log_interval: int = 10
    """Log every this many steps."""
    # --- Checkpoints and stopping ---
    save: Optional[str] = None
    """Checkpoint folder to write."""
    load: Optional[str] = None
    """Checkpoint folder to resume from (the latest complete checkpoint in it)."""
    overwrite_save: bool = False
    """Start over in a --save folder that holds checkpoints this run does not resume from (no
    --load of it): they are deleted at start. Without it such a folder is refused, since the
    run's saves would rewind its tracker."""
    no_load_optim: bool = False
    """With --load: restore weights, iteration and data position but start a fresh optimizer and
    LR schedule (e.g. across a change between EP=1 and EP>1)."""
    finetune: bool = False
    """With --load: load the model weights only and start a new run (Megatron-LM's flag): iteration
    0, a fresh optimizer and LR schedule, the data from the start, RNG from --seed; e.g. a joint run
    from an --training-mode encoder_ctc checkpoint. --save must name another folder."""
    save_interval: Optional[int] = None
    """Save every this many steps (and at the end when --save is set); 0 or None: at the end only."""
    async_save: bool = False
    """Write checkpoints in the background (a forked writer per rank) while training goes on; a
    checkpoint counts (marker, tracker) once every rank's writes are done. Each save still waits
    for the previous one, as does the end of the run and a signal's stop."""
    exit_interval: Optional[int] = None
    """Save (with --save) and exit once the iteration is a multiple of this (resume with --load)."""
    exit_duration_in_mins: Optional[float] = None
    """Save (with --save) and exit at the first step boundary after this many minutes of training
    (a job's time limit; resume with --load)."""
    # --- Training: schedule and optimizer ---
    seed: int = 1234
    """Seed of weights, data order and dropout."""
    # --- Logging and validation ---
    log_dir: Optional[str] = None
    """Where metrics.jsonl goes; default: --save, else ./runs/latest."""
    tensorboard_dir: Optional[str] = None
    """Write TensorBoard event files here (the ``plots`` extra's tensorboard); none without it."""
    wandb_project: Optional[str] = None
    """Log the metrics to this Weights & Biases project too (needs the wandb package)."""
    wandb_exp_name: Optional[str] = None
    """The Weights & Biases run's name (with --wandb-project)."""
    logging_level: Optional[int] = None
    """Python logging level of the run's log lines (10 debug, 20 info, 30 warning; default 20)."""
    # --- Training: schedule and optimizer ---
    check_for_nan_in_loss_and_grad: bool = True
    """Skip the update (on every rank; counted, no checkpoint) when the loss or the reduced
    gradient norm is NaN or inf anywhere; off: core's optimizer applies whatever it gets."""
    max_consecutive_nan_skips: int = 5
    """Stop after this many consecutive skipped steps (non-finite loss or gradient)."""
    training_mode: str = 'joint'
    """joint (all train), head_only (only the MTP heads), freeze_llm (encoder, projector, MTP) or
    encoder_ctc (only the audio encoder and its CTC head, on the CTC loss alone; the LLM does not
    run: stage 1 of a two-stage recipe, continued by --finetune)."""
    # --- Data ---
    train_manifest: Optional[str] = None
    """Training manifest(s), comma-separated (JSONL, NeMo style)."""
    valid_manifest: Optional[str] = None
    """Validation manifest(s), comma-separated."""

    def validate(self, dp_size: Optional[int] = None) -> None:
        check_types(self)
        at_least(self, 1, ('train_iters', 'micro_batch_size', 'global_batch_size', 'log_interval', 'eval_iters',
                           'max_consecutive_nan_skips', 'lr_decay_iters', 'exit_interval'))
        at_least(self, 0, ('lr', 'min_lr', 'lr_warmup_iters', 'weight_decay', 'clip_grad', 'eval_interval',
                           'save_interval', 'seed'))
        for name in ('adam_beta1', 'adam_beta2'):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.wandb_exp_name and not self.wandb_project:
            raise ConfigError("--wandb-exp-name names a run of --wandb-project: give the project too")
        if self.wandb_project and importlib.util.find_spec('wandb') is None:
            raise ConfigError(f"--wandb-project {self.wandb_project}: the wandb package is not installed "
                              "(pip install wandb)")
        if self.logging_level is not None and self.logging_level < 0:
            raise ConfigError(f"--logging-level must be >= 0, got {self.logging_level}")
        if self.async_save and not self.save:
            raise ConfigError("--async-save needs --save (the folder to write)")
        if self.save_interval and not self.save:
            raise ConfigError(f"--save-interval {self.save_interval} needs --save (the folder to write), "
                              "or --save-interval 0 for no periodic saves")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"--global-batch-size {self.global_batch_size} is not divisible by "
                              f"--micro-batch-size {self.micro_batch_size}")
        if self.context_parallel_size != 1:
            raise ConfigError("--context-parallel-size > 1 is not supported yet")
        one_of(self, 'training_mode', CHOICES['training_mode'])
        one_of(self, 'lr_decay_style', CHOICES['lr_decay_style'])
        if dp_size is not None and self.global_batch_size % (self.micro_batch_size * dp_size):
            raise ConfigError(f"--global-batch-size {self.global_batch_size} is not divisible by "
                              f"--micro-batch-size {self.micro_batch_size} x data-parallel size {dp_size}")
        # Core's scheduler asserts warm-up < decay; a constant schedule decays over --train-iters.
        if self.lr_decay_style == 'constant' and self.lr_warmup_iters >= self.train_iters:
            raise ConfigError(f"--lr-warmup-iters {self.lr_warmup_iters} must be below --train-iters "
                              f"{self.train_iters}")
        decay = self.lr_decay_iters or self.train_iters
        if self.lr_decay_style != 'constant' and self.lr_warmup_iters >= decay:
            raise ConfigError(f"--lr-warmup-iters {self.lr_warmup_iters} must be below --lr-decay-iters "
                              f"(or --train-iters) {decay}")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer")
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ConfigError(f"--exit-duration-in-mins {self.exit_duration_in_mins} must be positive")
        if not self.train_manifest:
            raise ConfigError("--train-manifest is required")
        self._validate_finetune()

    def _validate_finetune(self) -> None:
        if self.finetune and not self.load:
            raise ConfigError("--finetune needs --load (the checkpoint whose weights start the run)")
        if self.finetune and self.save and os.path.realpath(self.save) == os.path.realpath(self.load):
            raise ConfigError(f"--finetune starts a new run from --load {self.load}'s weights: --save needs "
                              "another folder (to resume a finetuning run, --load its own --save folder "
                              "without --finetune)")
