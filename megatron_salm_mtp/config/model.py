"""The SALM itself: its architecture and the losses it learns from (Megatron-LM names, one docstring
per field). How it is laid out over devices, its precision and its kernels are the other sections
of :class:`~megatron_salm_mtp.config.salm.SALMConfig`."""

from dataclasses import dataclass

from ..config_checks import ConfigError, at_least, below_one, one_of, positive
from ..data.ctc_phonemes import PHONEMES
from ..data.ctc_text import CTC_CHARACTERS
from .choices import CHOICES

_AT_LEAST_ONE = ('num_layers', 'hidden_size', 'ffn_hidden_size', 'num_attention_heads', 'num_query_groups',
                 'kv_channels', 'vocab_size', 'make_vocab_size_divisible_by', 'seq_length', 'encoder_num_layers',
                 'encoder_hidden_size', 'encoder_num_attention_heads', 'encoder_ffn_hidden_size',
                 'encoder_max_source_positions', 'audio_frame_stack', 'num_experts', 'moe_ffn_hidden_size')
_DROPOUTS = ('hidden_dropout', 'attention_dropout', 'encoder_hidden_dropout', 'encoder_attention_dropout')


@dataclass
class ModelConfig:
    """LLM, MTP heads, experts, audio encoder, projector and CTC head, and their losses."""
    # --- LLM (GPTModel) ---
    num_layers: int = 2
    """Decoder layers of the LLM."""
    hidden_size: int = 64
    """LLM width."""
    ffn_hidden_size: int = 176
    """SwiGLU inner width (per branch)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int | None = 2
    """Key/value heads (grouped-query attention); None means as many as query heads."""
    kv_channels: int | None = None
    """Head dimension; None means hidden_size / num_attention_heads."""
    qk_layernorm: bool = False
    """RMSNorm on queries and keys per head (Qwen3)."""
    add_qkv_bias: bool = False
    """Bias on the QKV projection (Qwen2)."""
    untie_embeddings_and_output_weights: bool = False
    """Separate output head instead of the tied word embedding."""
    vocab_size: int = 272
    """Tokenizer vocabulary (set from the tokenizer by the training entry point); padded to
    make_vocab_size_divisible_by x TP for the model."""
    make_vocab_size_divisible_by: int | None = 128
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
    hidden_dropout: float = 0.0
    """Dropout on the LLM's (and MTP layers') residual branches while training (0: none)."""
    attention_dropout: float = 0.0
    """Dropout on the LLM's (and MTP layers') attention probabilities while training (0: none)."""
    # --- Multi-token prediction ---
    mtp_num_layers: int | None = None
    """MTP depths D (None or 0: no MTP)."""
    mtp_loss_scaling_factor: float = 0.1
    """lambda: the MTP term is lambda / D times the sum of per-depth mean losses."""
    mtp_use_repeated_layer: bool = False
    """One MTP layer whose weights serve all D depths (Nemotron-3 Super's shared head)."""
    mtp_layer_pattern: str = '*-'
    """Sub-layers of each MTP depth: '*' attention, '-' dense MLP, 'E' MoE MLP ('*-', '*E' or '*';
    NeMo's 'E' alone means attention + MoE)."""
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
    num_experts: int | None = None
    """Routed experts of each MoE layer; None: no MoE."""
    moe_router_topk: int = 2
    """Experts each token is routed to (softmax over the top-k router logits)."""
    moe_ffn_hidden_size: int | None = None
    """SwiGLU inner width (per branch) of each expert; None means ffn_hidden_size."""
    moe_token_dispatcher_type: str = 'allgather'
    """How tokens reach their experts' ranks: allgather or alltoall."""
    moe_router_load_balancing_type: str = 'aux_loss'
    """aux_loss (Switch), seq_aux_loss (DeepSeek-V2, per sequence) or none."""
    moe_aux_loss_coeff: float = 0.0
    """Weight of the load-balancing loss (0: none)."""
    # --- Audio encoder (Whisper-shaped) and projector ---
    num_mel_bins: int = 80
    """Log-mel bins of the input features."""
    encoder_num_layers: int = 2
    """Audio encoder layers."""
    encoder_hidden_size: int = 64
    """Audio encoder width."""
    encoder_num_attention_heads: int = 4
    """Audio encoder heads."""
    encoder_ffn_hidden_size: int | None = None
    """Audio encoder GELU MLP width; None means 4 x encoder_hidden_size."""
    encoder_max_source_positions: int = 1500
    """Sinusoidal positions after the stride-2 stem (1500 = 30 s, as Whisper)."""
    encoder_hidden_dropout: float = 0.0
    """Dropout on the audio encoder's residual branches while training (0: none)."""
    encoder_attention_dropout: float = 0.0
    """Dropout on the audio encoder's attention probabilities while training (0: none)."""
    encoder_conv_kernel_size: int = 0
    """Conformer convolution modules in the audio encoder (NeMo's conv_kernel_size): in every layer,
    between attention and MLP, a residual branch of LayerNorm, pointwise convolution + GLU, a
    depthwise convolution over this many frames (odd, >= 3), LayerNorm, SiLU and a pointwise
    convolution (model/conformer.py). 0: Whisper's layers (attention + MLP), which --whisper fills."""
    encoder_layer_mix: bool = False
    """The projector reads a learnt mix of every encoder layer instead of the last alone (SUPERB's
    weighted sum): one weight per layer, softmax-normalised and equal at the start, over each
    layer's output through the encoder's final LayerNorm. The lower layers keep detail of the sound
    that the last, trained for CTC, lets go. The CTC head still reads the last layer. Its weights
    live in the projector: a checkpoint saved without them does not load."""
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
    """What the CTC head emits: the tokenizer's ids (tokens), characters (38 of them: letters,
    digits, apostrophe, space; far fewer classes, so the encoder leaves CTC's blank plateau sooner)
    or phonemes (52: espeak-ng's IPA characters less the stress marks, from each manifest line's
    "phonemes" field: what the voice said, not how it is spelt, so an accent needs no spelling rules
    of its own; needs --ctc-loss-weight > 0; a line without the field is skipped and counted, a
    manifest without it refused at start)."""
    ctc_intermediate_layer: int = 0
    """Intermediate CTC (InterCTC): the CTC head also reads the output of this encoder layer
    (1-based, below the last; through the encoder's final LayerNorm, as ESPnet's interctc_layer_idx),
    so the lower layers learn to emit the targets too, a regulariser of the encoder. No new weights:
    checkpoints load either way. Needs --ctc-loss-weight > 0. 0: off."""
    ctc_intermediate_weight: float = 0.3
    """lambda of intermediate CTC: the CTC objective is (1 - lambda) x the last layer's CTC loss +
    lambda x the intermediate layer's (ESPnet's interctc_weight); with --ctc-intermediate-layer."""

    @property
    def mtp_depths(self) -> int:
        return self.mtp_num_layers or 0

    @property
    def mtp_uses_experts(self) -> bool:
        return bool(self.mtp_depths) and 'E' in self.mtp_layer_pattern

    @property
    def ctc_enabled(self) -> bool:
        """Whether the model has a CTC head on its audio encoder and trains it."""
        return self.ctc_loss_weight > 0

    @property
    def ctc_vocab_size(self) -> int:
        """Ids the CTC head emits besides its blank."""
        alphabets = {'characters': CTC_CHARACTERS, 'phonemes': PHONEMES}
        alphabet = alphabets.get(self.ctc_target_units)
        return self.vocab_size if alphabet is None else len(alphabet)

    def _validate_model(self, vocabulary: bool) -> None:
        """The architecture on its own (types are checked by the caller); ``vocabulary=False``
        before the tokenizer has set it."""
        self._validate_model_values()
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ConfigError(f'--num-attention-heads {self.num_attention_heads} is not divisible by '
                              f'--num-query-groups {groups}')
        if self.mtp_depths and self.position_embedding_type != 'rope':
            raise ConfigError(f'--mtp-num-layers needs --position-embedding-type rope (got '
                              f'{self.position_embedding_type!r}): learned absolute positions are '
                              'claimed by both the first and the MTP stage under PP')
        if self.mtp_layer_pattern not in ('*-', '*', '*E', 'E'):
            raise ConfigError(f"--mtp-layer-pattern {self.mtp_layer_pattern!r}: choose '*-' (attention + "
                              "MLP), '*E' or 'E' (attention + MoE) or '*' (attention only)")
        self._validate_experts()
        if self.mtp_self_distillation and not self.mtp_depths:
            raise ConfigError('--mtp-self-distillation needs MTP heads (--mtp-num-layers)')
        if self.mtp_detach_trunk and not self.mtp_depths:
            raise ConfigError('--mtp-detach-trunk needs --mtp-num-layers > 0')
        if vocabulary and not 0 <= self.audio_token_id < self.vocab_size:
            raise ConfigError(f'--audio-token-id {self.audio_token_id} is outside the vocabulary '
                              f'(--vocab-size {self.vocab_size})')
        self._validate_ctc()

    def _validate_model_values(self) -> None:
        """Ranges and choices of single fields."""
        at_least(self, 1, _AT_LEAST_ONE)
        at_least(self, 0, ('mtp_num_layers', 'mtp_loss_scaling_factor'))
        positive(self, ('rotary_base', 'norm_epsilon', 'init_method_std'))
        below_one(self, _DROPOUTS)
        one_of(self, 'position_embedding_type', CHOICES['position_embedding_type'])
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f'--hidden-size {self.hidden_size} is not divisible by --num-attention-heads '
                              f'{self.num_attention_heads} (or give the head size with --kv-channels)')
        if self.encoder_hidden_size % self.encoder_num_attention_heads:
            raise ConfigError(f'--encoder-hidden-size {self.encoder_hidden_size} is not divisible by '
                              f'--encoder-num-attention-heads {self.encoder_num_attention_heads}')
        kernel = self.encoder_conv_kernel_size
        if kernel != 0 and (kernel < 3 or kernel % 2 == 0):
            raise ConfigError(f'--encoder-conv-kernel-size {kernel} must be odd and >= 3 (a frame and its '
                              'neighbours on both sides), or 0 for no convolution modules')
        if self.encoder_layer_mix and self.encoder_num_layers < 2:
            raise ConfigError(f'--encoder-layer-mix mixes encoder layers: --encoder-num-layers '
                              f'{self.encoder_num_layers} gives only one')


    def _validate_experts(self) -> None:
        """The MoE MTP layers' own settings (how experts split over ranks: SALMConfig)."""
        if 'E' in self.mtp_layer_pattern and not self.num_experts:
            raise ConfigError(f'--mtp-layer-pattern {self.mtp_layer_pattern!r} (MoE) needs --num-experts')
        if self.num_experts is None:
            return
        if not self.mtp_uses_experts:
            raise ConfigError(f'--num-experts {self.num_experts}: no layer uses experts (MoE MTP '
                              'layers need --mtp-num-layers and --mtp-layer-pattern E)')
        if not 1 <= self.moe_router_topk <= self.num_experts:
            raise ConfigError(f'--moe-router-topk {self.moe_router_topk} must be in 1..--num-experts '
                              f'{self.num_experts}')
        one_of(self, 'moe_token_dispatcher_type', CHOICES['moe_token_dispatcher_type'])
        one_of(self, 'moe_router_load_balancing_type', CHOICES['moe_router_load_balancing_type'])
        if self.moe_aux_loss_coeff < 0:
            raise ConfigError(f'--moe-aux-loss-coeff {self.moe_aux_loss_coeff} must be >= 0')

    def _validate_intermediate_ctc(self) -> None:
        layer, last = self.ctc_intermediate_layer, self.encoder_num_layers
        if not self.ctc_enabled:
            raise ConfigError(f'--ctc-intermediate-layer {layer} feeds the CTC head, which needs --ctc-loss-weight > 0')
        if not 1 <= layer < last:
            raise ConfigError(f'--ctc-intermediate-layer {layer} must be in 1..{last - 1} '
                              f'(below the last of --encoder-num-layers {last}; 0: off)')
        if not 0 < self.ctc_intermediate_weight < 1:  # also refuses NaN
            raise ConfigError(f'--ctc-intermediate-weight {self.ctc_intermediate_weight} must be in (0, 1): '
                              'the share of the CTC objective given to the intermediate layer')

    def _validate_ctc(self) -> None:
        one_of(self, 'ctc_target_units', CHOICES['ctc_target_units'])
        if not self.ctc_loss_weight >= 0:  # also refuses NaN
            raise ConfigError(f'--ctc-loss-weight {self.ctc_loss_weight} must be >= 0 (0: off)')
        if self.ctc_target_units == 'phonemes' and not self.ctc_enabled:
            raise ConfigError('--ctc-target-units phonemes needs --ctc-loss-weight > 0: without a CTC head '
                              'the data would still ask every manifest line for its phonemes')
        if self.ctc_intermediate_layer:
            self._validate_intermediate_ctc()
        if self.ctc_enabled and self.freeze_audio_encoder:
            raise ConfigError('--ctc-loss-weight trains the audio encoder, which --freeze-audio-encoder '
                              'keeps fixed: drop one of them')

