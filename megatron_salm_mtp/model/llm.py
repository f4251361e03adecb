"""The LLM: Megatron-Core's ``GPTModel`` with the MTP loss computed the way speech batches need.

Only ``_postprocess`` differs from upstream, and only when MTP runs with labels: the MTP block gets
its inputs from ``embed_mtp_inputs`` (scattered for sequence parallelism: Megatron-LM #6256), each
depth is supervised by the expanded answer-only mask (never "all ones": #6010) and weighted by the
global per-token weights of ``mtp.py`` (never divided by a local count that can be zero: #3396),
and per-depth loss and top-1 agreement are recorded for logging; with ``mtp_self_distillation``
a depth's loss is the KL from the trunk's own distribution instead (``distill.py``). The main and
MTP heads compute logits only at supervised positions (``supervised_token_loss``), and with
``fused_linear_cross_entropy`` hold none at all (``linear_ce.py``).
"""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import tensor_parallel
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler
from torch.utils.checkpoint import checkpoint

from ..compat import mcore
from .distill import vocab_parallel_kl
from .linear_ce import linear_cross_entropy
from .mtp import MTPStats, mtp_target_masks
from .packed import PackedLayout, per_position_rotary


def vocab_parallel_top1_hits(logits: torch.Tensor, labels: torch.Tensor, tp_group) -> torch.Tensor:
    """[b, s] 1.0 where the label has the highest logit, for logits sharded over the vocabulary.

    logits: [s, b, v/tp]; labels: [b, s]. Two small all-reduces instead of gathering the vocabulary.
    """
    logits = logits.detach()  # compared in their own dtype: no fp32 copy of a vocab-wide tensor
    shard = logits.shape[-1]
    rank = torch.distributed.get_rank(tp_group) if tp_group is not None else 0
    local = labels.t() - rank * shard  # [s, b]
    inside = (local >= 0) & (local < shard)
    target = torch.gather(logits, -1, local.clamp(0, shard - 1)[..., None])[..., 0].float() * inside
    best = logits.max(dim=-1).values.float()
    if tp_group is not None and tp_group.size() > 1:
        torch.distributed.all_reduce(target, group=tp_group)
        torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX, group=tp_group)
    return (target >= best).float().t()


@dataclass(frozen=True)
class StepInputs:
    """What one forward of the LLM takes beyond core's arguments. ``GPTModel.forward`` hands
    ``_postprocess`` no extra argument, so :meth:`SpeechGPTModel.step_inputs` holds them for one call."""
    head_row_counts: Sequence[int] | None = None
    """Supervised rows of the main head and of each MTP depth, counted on the host (None: the
    heads count on the device)."""
    packed_layout: PackedLayout | None = None
    """The microbatch's packed rows (``packed.py``), None for rows of one utterance."""


class SpeechGPTModel(GPTModel):
    """GPTModel whose MTP loss uses the answer-only mask and global per-token weights."""

    def __init__(self, *args, audio_token_id: int, mask_placeholder_paths: bool = True,
                 full_sequence_logits: bool = False, mtp_use_repeated_layer: bool = False,
                 head_chunk_rows: int = 0, mtp_recompute: bool = False,
                 mtp_detach_trunk: bool = False, mtp_self_distillation: bool = False,
                 fused_linear_cross_entropy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_linear_cross_entropy = fused_linear_cross_entropy
        self.mtp_detach_trunk = mtp_detach_trunk
        self.mtp_self_distillation = mtp_self_distillation
        self.head_chunk_rows = head_chunk_rows
        self.mtp_recompute = mtp_recompute
        self.mtp_use_repeated_layer = mtp_use_repeated_layer
        self.full_sequence_logits = full_sequence_logits
        self.audio_token_id = audio_token_id
        self.mask_placeholder_paths = mask_placeholder_paths
        depths = self.config.mtp_num_layers or 0
        # Training and evaluation keep separate windows, chosen by the module's mode.
        self._mtp_stats = {True: MTPStats(depths), False: MTPStats(depths)} if self.mtp_process else None
        self.mtp_loss_weights: torch.Tensor | None = None
        self._step = StepInputs()

    @property
    def mtp_stats(self) -> MTPStats | None:
        return self._mtp_stats[self.training] if self._mtp_stats else None

    @contextlib.contextmanager
    def step_inputs(self, inputs: StepInputs):
        """Hold ``inputs`` for the forward calls inside the block (one, in ``SALM.forward``)."""
        self._step = inputs
        try:
            yield
        finally:
            self._step = StepInputs()

    def set_mtp_loss_weights(self, weights: torch.Tensor) -> None:
        """Per-depth weights for the coming global batch (``mtp.mtp_loss_weights``)."""
        self.mtp_loss_weights = weights

    def embed_mtp_inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Embedding of the (rolled) token ids that an MTP depth consumes; placeholders included.

        With sequence parallelism the hidden states entering MTP are sharded along the sequence
        while the SALM's embedding is built unscattered (audio is spliced first), so scatter here.
        """
        embedded = self.embedding(input_ids=input_ids, position_ids=position_ids)
        if self.config.sequence_parallel and not self.embedding.scatter_to_sequence_parallel:
            embedded = tensor_parallel.scatter_to_sequence_parallel_region(embedded)
        return embedded

    def _preprocess(self, *args, **kwargs):
        """Core's, with RoPE angles of each token's own position in a packed row (restarting per
        utterance) instead of its column (core's side: ``mcore.check_preprocess_contract``)."""
        outputs = super()._preprocess(*args, **kwargs)
        layout = self._step.packed_layout
        if layout is None or layout.position_ids is None or outputs[1] is None:
            return outputs
        rotary = per_position_rotary(outputs[1], layout.position_ids)
        return (outputs[0], rotary) + tuple(outputs[2:])

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, rotary_pos_emb,
                     rotary_pos_cos, rotary_pos_sin, mtp_in_postprocess=None, loss_mask=None,
                     **kwargs):
        training_loss = self.post_process and labels is not None and loss_mask is not None
        if not training_loss and not (self.post_process and self.mtp_process):
            return super()._postprocess(hidden_states, input_ids, position_ids, labels,
                                        rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
                                        mtp_in_postprocess=mtp_in_postprocess,
                                        loss_mask=loss_mask, **kwargs)
        output_weight = (self.shared_embedding_or_output_weight()
                         if self.share_embeddings_and_output_weights else None)
        if labels is None:  # inference with an MTP model: the main head only
            logits, _ = self.output_layer(hidden_states, weight=output_weight,
                                          runtime_gather_output=kwargs.get('runtime_gather_output'))
            return logits.transpose(0, 1).contiguous()
        if self.mtp_process:
            hidden_states = self._add_mtp_losses(hidden_states, input_ids, position_ids, labels,
                                                 loss_mask, output_weight, rotary_pos_emb,
                                                 rotary_pos_cos, rotary_pos_sin, kwargs)
        token_loss, _ = self.supervised_token_loss(hidden_states, labels, loss_mask, output_weight,
                                                   num_rows=self._head_rows(0))
        return token_loss

    def _head_rows(self, head: int) -> int | None:
        """Host-counted supervised rows of head ``head`` (0 main, k depth k), None if not given."""
        counts = self._step.head_row_counts
        return None if counts is None else int(counts[head])

    def supervised_token_loss(self, hidden_states, labels, mask, output_weight, with_hits=False,
                              num_rows: int | None = None, teacher_states=None, teacher_shift=0):
        """([b, s] CE, zero where ``mask`` is 0; [b, s] top-1 hits or None) computing logits only at
        supervised positions: speech prompts are mostly audio, and a 150k-word head over every
        position costs more than a decoder layer (``full_sequence_logits`` restores core's way).
        ``num_rows``, the count of nonzero ``mask`` entries known on the host, spares the host
        round trip of finding how many rows there are. With ``teacher_states`` (trunk states laid
        out as ``hidden_states``) the loss is the KL from the main head's distribution at the
        position ``teacher_shift`` later instead of the CE of ``labels`` (``distill.py``).
        """
        if self.config.sequence_parallel:  # select rows of the whole sequence
            hidden_states = self._whole_sequence(hidden_states)
            teacher_states = None if teacher_states is None else self._whole_sequence(teacher_states)
        seq, batch, width = hidden_states.shape
        flat_mask = mask.t().reshape(-1)  # s-major, as hidden_states is [s, b, h]
        if self.full_sequence_logits:
            rows = torch.arange(seq * batch, device=hidden_states.device)
        elif num_rows is not None:
            rows = torch.nonzero_static(flat_mask, size=num_rows).squeeze(1)
        else:
            rows = flat_mask.nonzero().squeeze(1)
        picked = hidden_states.reshape(seq * batch, width).index_select(0, rows).unsqueeze(1)
        targets = labels.t().reshape(-1).index_select(0, rows).unsqueeze(0)  # [1, n]
        teachers = None
        if teacher_states is not None:  # position i + shift is row + shift * batch, s-major
            teacher_rows = (rows + teacher_shift * batch).clamp(max=seq * batch - 1)
            teachers = teacher_states.reshape(seq * batch, width).index_select(0, teacher_rows).unsqueeze(1)
        picked_loss, picked_hits = self._chunked_head_loss(picked, targets, output_weight, with_hits,
                                                           teachers)
        weights = flat_mask.index_select(0, rows).float()
        loss = torch.zeros(seq * batch, dtype=picked_loss.dtype, device=picked_loss.device)
        loss = loss.index_add(0, rows, picked_loss * weights).view(seq, batch).t()
        if not with_hits:
            return loss, None
        hits = torch.zeros(seq * batch, device=picked_loss.device)
        return loss, hits.index_add(0, rows, picked_hits * weights).view(seq, batch).t()

    def _whole_sequence(self, states):
        return tensor_parallel.gather_from_sequence_parallel_region(
            states, tensor_parallel_output_grad=False, group=self.pg_collection.tp)

    def _chunked_head_loss(self, picked, targets, output_weight, with_hits, teachers=None):
        """[n] CE (and [n] top-1 hits) of the head over rows ``picked`` [n, 1, h]; with
        ``head_chunk_rows`` the rows go through in chunks whose logits are recomputed in backward,
        so a 150k-word head holds one chunk's logits instead of every row's. With
        ``fused_linear_cross_entropy`` the CE heads hold no logits at all (``linear_ce.py``)."""
        if self.fused_linear_cross_entropy and teachers is None:
            weight = output_weight if output_weight is not None else self.output_layer.weight
            loss, hits = linear_cross_entropy(picked[:, 0], weight, targets[0], self.pg_collection.tp)
            return loss, (hits if with_hits else None)
        rows = picked.shape[0]
        chunk = self.head_chunk_rows
        if not chunk or rows <= chunk or not torch.is_grad_enabled():
            return self._head_loss(picked, targets, output_weight, with_hits, teachers)
        parts = [checkpoint(self._head_loss, picked[start:start + chunk],
                            targets[:, start:start + chunk], output_weight, with_hits,
                            None if teachers is None else teachers[start:start + chunk],
                            use_reentrant=False)
                 for start in range(0, rows, chunk)]
        losses, hits = zip(*parts)
        return torch.cat(losses), (torch.cat(hits) if with_hits else None)

    def _head_loss(self, picked, targets, output_weight, with_hits, teachers=None):
        sequence_parallel, self.output_layer.sequence_parallel = self.output_layer.sequence_parallel, False
        try:
            logits, _ = self.output_layer(picked, weight=output_weight)  # [n, 1, V/tp]
            if teachers is not None:
                with torch.no_grad():
                    teacher_logits, _ = self.output_layer(teachers, weight=output_weight)
        finally:
            self.output_layer.sequence_parallel = sequence_parallel
        if teachers is None:
            loss = self.compute_language_model_loss(targets, logits)[0]
        else:
            loss = vocab_parallel_kl(logits, teacher_logits, self.pg_collection.tp)[:, 0]
        if not with_hits:
            return loss, None
        return loss, vocab_parallel_top1_hits(logits, targets, self.pg_collection.tp)[0]

    def _detached_mtp_inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_mtp_inputs(input_ids, position_ids).detach()

    def run_mtp_depths(self, depths, hidden_states, input_ids, position_ids, detach_trunk=False,
                       **layer_kwargs):
        """Hidden states of ``depths`` chained MTP depths (core's block loop, plus shared weights:
        with ``mtp_use_repeated_layer`` one layer serves every depth, so decoding may run more
        depths than training did). ``detach_trunk``: the trunk's hidden states and the word
        embedding enter detached, so the MTP loss trains the MTP layers alone."""
        embedding = self.embed_mtp_inputs
        if detach_trunk:
            hidden_states, embedding = hidden_states.detach(), self._detached_mtp_inputs
        outputs = []
        for depth in range(depths):
            layer = self.mtp.layers[0 if self.mtp_use_repeated_layer else depth]
            run = mcore.run_mtp_layer
            if self.mtp_recompute and self.training and torch.is_grad_enabled():
                # Dropout is off in these configs, so replaying the layer needs no RNG tracker.
                run = partial(checkpoint, mcore.run_mtp_layer, use_reentrant=False)
            hidden_states, input_ids, position_ids = run(
                layer, input_ids=input_ids, position_ids=position_ids, hidden_states=hidden_states,
                embedding=embedding, **layer_kwargs)
            outputs.append(hidden_states)
        return outputs

    def _add_mtp_losses(self, hidden_states, input_ids, position_ids, labels, loss_mask,
                        output_weight, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, kwargs):
        """Run the MTP block and hook each depth's weighted summed CE into the backward pass."""
        if loss_mask is None:
            raise ValueError('MTP training needs the answer-only loss_mask (None would supervise '
                             'audio and prompt positions)')
        weights = self.mtp_loss_weights
        if weights is None:
            if self.training:
                raise RuntimeError('set_mtp_loss_weights() was not called for this global batch')
            # evaluation: losses logged only
            weights = torch.zeros(self.config.mtp_num_layers, device=hidden_states.device)
        depths = self.config.mtp_num_layers
        if self.mtp_detach_trunk:  # the heads' shared output weight stays out of the MTP loss too
            output_weight = (output_weight if output_weight is not None else self.output_layer.weight).detach()
        chunks = [hidden_states] + self.run_mtp_depths(
            depths, hidden_states, input_ids, position_ids, detach_trunk=self.mtp_detach_trunk,
            attention_mask=kwargs.get('attention_mask'),
            rotary_pos_emb=rotary_pos_emb, rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin, packed_seq_params=kwargs.get('packed_seq_params'))
        layout = self._step.packed_layout
        segments = None if layout is None else layout.segments
        masks = mtp_target_masks(loss_mask, input_ids, depths, self.audio_token_id,
                                 self.mask_placeholder_paths, segments)
        mtp_labels = labels
        teacher = chunks[0].detach() if self.mtp_self_distillation else None
        for depth in range(depths):
            mtp_labels = torch.roll(mtp_labels, shifts=-1, dims=-1)
            token_loss, hits = self.supervised_token_loss(chunks[depth + 1], mtp_labels,
                                                          masks[depth], output_weight, with_hits=True,
                                                          num_rows=self._head_rows(depth + 1),
                                                          teacher_states=teacher,
                                                          teacher_shift=depth + 1)
            loss_sum = token_loss.sum()
            self.mtp_stats.add(depth, loss_sum, masks[depth].sum(), hits.sum())
            weight = weights[depth].to(loss_sum.device)
            hidden_states = MTPLossAutoScaler.apply(hidden_states, weight * loss_sum)
        return hidden_states
