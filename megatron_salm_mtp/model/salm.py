"""The SALM: audio encoder + projector + LLM, composed per pipeline stage (LLaVA's pattern).

The first stage embeds the text, encodes and projects the audio and splices the audio tokens into
the placeholder positions; sequence parallelism scatters only after the splice. Every stage runs its
share of decoder layers; the last runs the head, the MTP block and the losses.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import get_num_layers_to_build

from ..config import SALMConfig
from ..data.frames import audio_tokens
from .audio_encoder import AudioEncoder
from .ctc import AuxLossInjector, CTCLengths, CTCStats, ctc_head, ctc_objective_sum
from .llm import SpeechGPTModel, StepInputs
from .packed import (
    MASK,
    THD,
    block_causal_mask,
    packed_layout,
    thd_layout,
    thd_packed_seq_params,
    thd_stage_input,
    thd_stage_output,
)
from .projector import AudioProjector
from .specs import TRANSFORMER_ENGINE, block_spec, mtp_block_spec
from .transformer_config import encoder_transformer_config, llm_transformer_config


def check_audio_placeholders(tokens: torch.Tensor, audio_lengths: torch.Tensor | None,
                             audio_token_id: int) -> None:
    """Raise unless ``tokens`` hold as many audio placeholders as the audio gives tokens
    (``audio_lengths`` [n] per utterance, None for no audio). Free on the host; one round trip
    when the tensors live on a GPU."""
    placeholders = (tokens == audio_token_id).sum()
    given = audio_lengths.sum() if audio_lengths is not None else torch.zeros_like(placeholders)
    expected, given = torch.stack([placeholders, given.to(placeholders)]).tolist()
    if expected != given:
        per_utterance = audio_lengths.tolist() if audio_lengths is not None else 'no audio'
        raise ValueError(f'input_ids carry {expected} audio placeholders but the audio gives {given} '
                         f'tokens (per utterance: {per_utterance}); the data side must '
                         'expand each utterance with data.frames.audio_tokens()')


@dataclass
class EncodedAudio:
    """The audio encoder's pass over a batch's audios (``SALM.encode_audio``), for a decoder that
    reads the frames twice (the CTC head's steering) or splices one audio into several rows."""
    output: torch.Tensor  # [n, T_enc, width]
    kept: dict[int, torch.Tensor]  # the lower layers the projector's layer mix reads

    def repeated(self, copies: int) -> 'EncodedAudio':
        """Each audio ``copies`` times in place, as ``repeat_interleave`` repeats rows."""
        return EncodedAudio(self.output.repeat_interleave(copies, 0),
                            {k: v.repeat_interleave(copies, 0) for k, v in self.kept.items()})


def splice_audio(text_embeddings: torch.Tensor, tokens: torch.Tensor, audio: torch.Tensor,
                 audio_lengths: torch.Tensor, audio_token_id: int) -> torch.Tensor:
    """Replace placeholder embeddings with audio tokens: the i-th placeholder (row-major) takes the
    i-th valid audio token. Counts must match (``check_audio_placeholders``, by the caller).

    text_embeddings [s, b, h]; tokens [b, s]; audio [n, T, h] with ``audio_lengths[i]`` valid
    tokens per utterance. Index arithmetic only (no boolean-mask indexing), so the GPU never
    reports a count to the host and the step's launches run ahead of the GPU.
    """
    seq, batch, width = text_embeddings.shape
    placeholders = tokens == audio_token_id  # [b, s]
    frames = audio.shape[0] * audio.shape[1]
    valid = (torch.arange(audio.shape[1], device=audio.device)[None, :] < audio_lengths[:, None]).reshape(-1)
    # frame_of_rank[r]: flat index of the r-th valid audio token; padding writes the spare slot.
    rank = torch.where(valid, valid.cumsum(0) - 1, frames)
    frame_of_rank = torch.zeros(frames + 1, dtype=torch.long, device=audio.device)
    frame_of_rank.scatter_(0, rank, torch.arange(frames, device=audio.device))
    # Ranks count placeholders row-major; the result is laid out [s, b] as the embeddings are.
    placeholder_rank = (placeholders.reshape(-1).cumsum(0) - 1).clamp(0, frames).view(batch, seq)
    source = frame_of_rank.index_select(0, placeholder_rank.t().reshape(-1))
    picked = audio.reshape(frames, width).index_select(0, source).to(text_embeddings.dtype)
    spliced = torch.where(placeholders.t().reshape(-1, 1), picked, text_embeddings.reshape(-1, width))
    return spliced.view(seq, batch, width)


class SALM(MegatronModule):
    def __init__(self, cfg: SALMConfig, impl: str, pre_process: bool = True,
                 post_process: bool = True, vp_stage: int | None = None):
        config = llm_transformer_config(cfg, fused_kernels=impl == TRANSFORMER_ENGINE)
        super().__init__(config=config)
        self.cfg = cfg
        # How packed rows reach attention (packed.py): TE attends to THD sequences only.
        self.packed_format = THD if impl == TRANSFORMER_ENGINE else MASK
        self.model_type = ModelType.encoder_or_decoder  # schedules read it
        self.pre_process, self.post_process = pre_process, post_process
        if pre_process:
            encoder_config = encoder_transformer_config(cfg)
            self.audio_encoder = AudioEncoder(encoder_config, impl, cfg.num_mel_bins,
                                              cfg.encoder_max_source_positions, cfg.encoder_conv_kernel_size)
            projector_config = encoder_transformer_config(cfg)
            projector_config.hidden_size = cfg.hidden_size
            projector_config.ffn_hidden_size = cfg.hidden_size
            self.audio_projector = AudioProjector(projector_config, impl, cfg.encoder_hidden_size,
                                                  cfg.audio_frame_stack,
                                                  cfg.encoder_num_layers if cfg.encoder_layer_mix else 0)
            if cfg.freeze_audio_encoder:
                self.audio_encoder.requires_grad_(False)
        self.ctc_head = None
        if pre_process and cfg.ctc_enabled:
            self.ctc_head = ctc_head(cfg.encoder_hidden_size, cfg.ctc_vocab_size, cfg.init_method_std,
                                     encoder_config.params_dtype)
            # Training and evaluation keep separate windows, chosen by the module's mode.
            self._ctc_stats = {True: CTCStats(), False: CTCStats()}
        self.ctc_loss_weight: torch.Tensor | None = None
        decoder_spec = block_spec(impl, get_num_layers_to_build(config, vp_stage=vp_stage),
                                  causal=True, qk_layernorm=cfg.qk_layernorm)
        self.language_model = SpeechGPTModel(
            config=config, transformer_layer_spec=decoder_spec, vocab_size=cfg.padded_vocab_size,
            max_sequence_length=cfg.seq_length, pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
            position_embedding_type=cfg.position_embedding_type, rotary_base=cfg.rotary_base,
            scatter_embedding_sequence_parallel=False,  # scatter after the splice, below
            mtp_block_spec=mtp_block_spec(impl, cfg.mtp_layer_pattern, cfg.qk_layernorm,
                                          cfg.mtp_use_repeated_layer, config, vp_stage=vp_stage),
            vp_stage=vp_stage, audio_token_id=cfg.audio_token_id,
            mask_placeholder_paths=cfg.mtp_mask_placeholder_paths,
            full_sequence_logits=cfg.full_sequence_logits, head_chunk_rows=cfg.head_chunk_rows,
            fused_linear_cross_entropy=cfg.fused_linear_cross_entropy,
            mtp_recompute=cfg.mtp_recompute, mtp_detach_trunk=cfg.mtp_detach_trunk,
            mtp_self_distillation=cfg.mtp_self_distillation,
            mtp_use_repeated_layer=cfg.mtp_use_repeated_layer)
        self.share_embeddings_and_output_weights = self.language_model.share_embeddings_and_output_weights
        lm = self.language_model
        if lm.share_embeddings_and_output_weights and lm.mtp_process and not pre_process:
            # The MTP stage's embedding copy already serves as the tied head: GPTModel would
            # otherwise allocate a second, never-used vocab x hidden output weight here.
            lm.output_layer.register_parameter('weight', None)

    @property
    def mtp_enabled(self) -> bool:
        """Whether the model trains MTP heads (on every stage; ``has_mtp_layers`` says where)."""
        return bool(self.cfg.mtp_depths)

    @property
    def has_mtp_layers(self) -> bool:
        return self.language_model.mtp_process

    @property
    def ctc_stats(self) -> CTCStats | None:
        return self._ctc_stats[self.training] if self.ctc_head is not None else None

    def set_ctc_loss_weight(self, weight: torch.Tensor) -> None:
        """Weight of the summed CTC loss for the coming global batch (``ctc.ctc_loss_weight``)."""
        self.ctc_loss_weight = weight

    def shared_embedding_or_output_weight(self):
        """Used by finalize_model_grads to all-reduce the embedding over first/MTP/last stages."""
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def embed_inputs(self, tokens, position_ids, audio_features=None, audio_feature_lengths=None,
                     placeholders_checked: bool = False, ctc_targets=None,
                     ctc_lengths: CTCLengths | None = None, encoded: EncodedAudio | None = None):
        """First stage: text embeddings with the projected audio spliced in, [s(/tp), b, h].

        ``placeholders_checked``: the caller checked the placeholder count on the host
        (``host_inputs.prepare_microbatch``); otherwise it is checked here, with a round trip.
        ``ctc_targets`` (batch contract) and their host ``ctc_lengths``: with a CTC head, the
        CTC loss joins the backward pass here (``ctc.py``). ``encoded``: the encoder's pass over
        ``audio_features`` already made (``encode_audio``), spliced instead of encoding again."""
        embeddings = self.language_model.embedding(input_ids=tokens, position_ids=position_ids)
        has_audio = audio_features is not None and audio_features.numel() > 0
        lengths = (audio_tokens(audio_feature_lengths.to(tokens.device), self.cfg.audio_frame_stack)
                   if has_audio else None)
        if not placeholders_checked:
            check_audio_placeholders(tokens, lengths, self.cfg.audio_token_id)
        if has_audio:
            scored = self.ctc_head is not None and ctc_targets is not None
            if encoded is not None and scored:
                raise ValueError('embed_inputs: a pre-encoded audio carries no intermediate layer for the CTC loss')
            output, kept = ((encoded.output, encoded.kept) if encoded is not None
                            else self._encode(audio_features, audio_feature_lengths, scored))
            audio = self.audio_projector(self._projector_input(output, kept))
            embeddings = splice_audio(embeddings, tokens, audio, lengths, self.cfg.audio_token_id)
            if self.ctc_head is not None:
                intermediate = kept.get(self.cfg.ctc_intermediate_layer) if scored else None
                embeddings = self._attach_ctc_loss(embeddings, output, intermediate, ctc_targets, ctc_lengths)
        if self.config.sequence_parallel:
            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
        return embeddings

    def encode_audio(self, features, feature_lengths) -> EncodedAudio:
        """The encoder's pass over ``features`` [n, mels, T] of ``feature_lengths`` [n] as
        ``embed_inputs`` makes it when decoding (no CTC loss)."""
        return EncodedAudio(*self._encode(features, feature_lengths, scored=False))

    def _encode(self, features, feature_lengths, scored: bool):
        """(the encoder's output, {layer: output} of the lower layers that the projector's layer mix
        and, when ``scored`` by CTC, intermediate CTC read), ``AudioEncoder.encode``."""
        layers = set(range(1, self.cfg.encoder_num_layers)) if self.cfg.encoder_layer_mix else set()
        if scored and self.cfg.ctc_intermediate_layer:
            layers.add(self.cfg.ctc_intermediate_layer)
        return self.audio_encoder.encode(features, feature_lengths, sorted(layers))

    def _projector_input(self, output, kept):
        """The encoder's output, or with the layer mix every layer's, first to last."""
        if not self.cfg.encoder_layer_mix:
            return output
        return [kept[k] for k in range(1, self.cfg.encoder_num_layers)] + [output]

    def _attach_ctc_loss(self, embeddings, frames, intermediate, targets, lengths: CTCLengths | None):
        """``embeddings`` carrying the weighted CTC loss of the encoder's output ``frames`` and its
        ``intermediate`` layer's (None without) into the backward pass."""
        if targets is None or lengths is None:
            if self.training:
                raise ValueError('--ctc-loss-weight is set but the microbatch has no ctc_targets / '
                                 'ctc_lengths (data/batching.py, host_inputs.prepare_microbatch)')
            return embeddings  # decoding: no transcript to score
        loss_sum = self._ctc_objective(frames, intermediate, targets, lengths)
        weight = self.ctc_loss_weight
        if weight is None:
            if self.training:
                raise RuntimeError('set_ctc_loss_weight() was not called for this global batch')
            return embeddings  # evaluation: the loss is logged only
        return AuxLossInjector.apply(embeddings, weight.to(loss_sum.device) * loss_sum)

    def encoder_ctc_loss(self, audio_features, audio_feature_lengths, ctc_targets,
                         ctc_lengths: CTCLengths) -> torch.Tensor:
        """The summed CTC loss of the encoder's output (``--training-mode encoder_ctc``): the
        encoder and the CTC head run, the projector and the LLM do not."""
        if self.ctc_head is None:
            raise ValueError("encoder_ctc_loss needs the first pipeline stage's CTC head (--ctc-loss-weight > 0)")
        layer = self.cfg.ctc_intermediate_layer
        frames, kept = self.audio_encoder.encode(audio_features, audio_feature_lengths, [layer] if layer else [])
        return self._ctc_objective(frames, kept.get(layer), ctc_targets, ctc_lengths)

    def _ctc_objective(self, frames, intermediate, targets, lengths: CTCLengths) -> torch.Tensor:
        return ctc_objective_sum(self.ctc_head, frames, intermediate, targets, lengths,
                                 self.cfg.ctc_intermediate_weight, self.ctc_stats)

    def forward(self, tokens, position_ids, labels=None, loss_mask=None, audio_features=None,
                audio_feature_lengths=None, head_row_counts: Sequence[int] | None = None,
                ctc_targets=None, ctc_lengths: CTCLengths | None = None, cu_seqlens=None):
        """``head_row_counts``: supervised rows of the main head and of each MTP depth, counted on
        the host by ``host_inputs.prepare_microbatch`` (which also checked the audio
        placeholders); with them the step needs no host round trip. Without them the model
        counts and checks on the device. ``ctc_targets`` / ``ctc_lengths``: see ``embed_inputs``.
        ``cu_seqlens`` [b, u + 1] (the batch's host copy): the rows are packed (``packed.py``),
        ``position_ids`` restart per utterance."""
        if cu_seqlens is not None and self.packed_format == THD:
            return self._forward_thd(tokens, position_ids, labels, loss_mask, audio_features,
                                     audio_feature_lengths, ctc_targets, ctc_lengths, head_row_counts,
                                     cu_seqlens)
        step, attention_mask = StepInputs(head_row_counts), None
        if cu_seqlens is not None:
            step = StepInputs(head_row_counts, packed_layout(cu_seqlens, position_ids))
            attention_mask = block_causal_mask(step.packed_layout.segments)
        return self._forward(tokens, position_ids, labels, loss_mask, audio_features,
                             audio_feature_lengths, ctc_targets, ctc_lengths, step,
                             attention_mask=attention_mask)

    def _forward_thd(self, tokens, position_ids, labels, loss_mask, audio_features,
                     audio_feature_lengths, ctc_targets, ctc_lengths, head_row_counts, cu_seqlens):
        """Packed rows as one THD sequence of b x s tokens (``packed.py``); returns the row layout."""
        rows, seq = tokens.shape
        flat = [None if t is None else t.reshape(1, -1) for t in (tokens, position_ids, labels, loss_mask)]
        if not self.pre_process:
            decoder = self.language_model.decoder
            decoder.input_tensor = thd_stage_input(decoder.input_tensor)
        step = StepInputs(head_row_counts, thd_layout(cu_seqlens.to(tokens.device), seq))
        output = self._forward(*flat, audio_features, audio_feature_lengths, ctc_targets, ctc_lengths, step,
                               packed_seq_params=thd_packed_seq_params(cu_seqlens, seq, tokens.device))
        if self.post_process:  # token losses [1, b*s] (or logits [1, b*s, v]) back in rows
            return output.reshape(rows, seq, *output.shape[2:])
        return thd_stage_output(output, rows)

    def _forward(self, tokens, position_ids, labels, loss_mask, audio_features, audio_feature_lengths,
                 ctc_targets, ctc_lengths, step: StepInputs, attention_mask=None, packed_seq_params=None):
        decoder_input = None
        if self.pre_process:
            decoder_input = self.embed_inputs(tokens, position_ids, audio_features,
                                              audio_feature_lengths,
                                              placeholders_checked=step.head_row_counts is not None,
                                              ctc_targets=ctc_targets, ctc_lengths=ctc_lengths)
        with self.language_model.step_inputs(step):
            return self.language_model(tokens, position_ids, attention_mask=attention_mask,
                                       decoder_input=decoder_input, labels=labels,
                                       loss_mask=loss_mask, packed_seq_params=packed_seq_params)
