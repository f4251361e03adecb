"""One global batch through Megatron-Core's schedules: forward, backward, gradient finalisation.

Before the schedule runs, the supervised-token counts of the whole global batch (all microbatches,
all DP ranks) fix the MTP and CTC weights, so the gradient does not depend on how the batch is split.
The forward step itself is ``forward_step.py``'s, shared with Megatron-LM's ``pretrain()``.

``--training-mode encoder_ctc`` runs the audio encoder and its CTC head only: each microbatch hands
core its summed CTC loss with its CTC target ids as the token count, so ``finalize_model_grads``
divides by the global batch's target ids (``calculate_per_token_loss``) and the objective is the
per-target CTC over the global batch, whatever its split; the CTC weight plays no part.
"""

from typing import NamedTuple

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_attr_wrapped_model, unwrap_model

from ..compat import mcore
from ..config import ENCODER_CTC, SALMConfig
from ..model.ctc import ctc_loss_weight, reduce_ctc_stats
from ..model.host_inputs import ctc_target_count, prepare_microbatch
from ..model.mtp import supervised_counts
from .forward_step import encoder_ctc_forward_step, forward_step, reduce_over_data_parallel, set_global_mtp_weights


def _language_models(model_chunks):
    return [get_attr_wrapped_model(chunk, 'language_model') for chunk in model_chunks]


def _salms(model_chunks):
    return [unwrap_model(chunk) for chunk in model_chunks]


def set_global_loss_weights(model_chunks, microbatches: list[dict], cfg: SALMConfig) -> torch.Tensor:
    """All-reduce this global batch's counts over DP in one call - supervised tokens of the main
    head and each MTP depth, then CTC target ids - and hand MTP and CTC their weights."""
    depths = cfg.mtp_depths
    counts = supervised_counts(microbatches, depths, cfg.audio_token_id, cfg.mtp_mask_placeholder_paths)
    if cfg.ctc_enabled:
        counts = torch.cat([counts, ctc_target_count(microbatches)])
    counts = reduce_over_data_parallel(counts)
    if depths:
        set_global_mtp_weights(_language_models(model_chunks), counts, cfg)
    if cfg.ctc_enabled:
        weight = ctc_loss_weight(counts[0], counts[-1], cfg.ctc_loss_weight)
        for salm in _salms(model_chunks):
            if salm.ctc_head is not None:
                salm.set_ctc_loss_weight(weight)
    return counts


def _set_grad_sync_funcs(config, ddp_chunks) -> None:
    """Hand the schedules each DDP chunk's gradient-sync controls. The interleaved schedule holds
    every chunk in no_sync until its backward passes end, so with overlapped reduction it must
    also start each chunk's reduction itself (grad_sync_func); DDP's hooks never would."""
    if len(ddp_chunks) == 1:
        config.no_sync_func = ddp_chunks[0].no_sync
        return
    config.no_sync_func = [chunk.no_sync for chunk in ddp_chunks]
    if ddp_chunks[0].ddp_config.overlap_grad_reduce:
        config.grad_sync_func = [chunk.start_grad_sync for chunk in ddp_chunks]


class LossTotals(NamedTuple):
    """The main loss summed over the global batch and its count (nan off the last stage): the main
    head's CE and supervised tokens; with --training-mode encoder_ctc, the CTC and its target ids."""
    loss_sum: float
    tokens: float

    @property
    def mean(self) -> float:
        return self.loss_sum / max(self.tokens, 1.0)


def forward_backward(model_chunks, microbatches: list[dict], cfg: SALMConfig,
                     forward_only: bool = False, training_mode: str = 'joint') -> LossTotals:
    """Run the schedule over ``microbatches``; gradients are finalised (DP reduce, embedding sync,
    1/N_main) unless ``forward_only``. ``microbatches`` are CPU tensors (pinned for a fast copy)."""
    microbatches = [prepare_microbatch(batch, cfg) for batch in microbatches]
    encoder_only = training_mode == ENCODER_CTC
    if not encoder_only and (cfg.mtp_depths or cfg.ctc_enabled):
        set_global_loss_weights(model_chunks, microbatches, cfg)
    config = get_attr_wrapped_model(model_chunks[0], 'config')
    config.finalize_model_grads_func = None if forward_only else finalize_model_grads
    if hasattr(model_chunks[0], 'no_sync'):
        _set_grad_sync_funcs(config, model_chunks)
    # One iterator per chunk: the interleaved schedule has every chunk read each microbatch.
    reports = get_forward_backward_func()(
        forward_step_func=encoder_ctc_forward_step if encoder_only else forward_step,
        data_iterator=[iter(microbatches) for _ in model_chunks],
        model=model_chunks, num_microbatches=len(microbatches), seq_length=cfg.seq_length,
        micro_batch_size=microbatches[0]['tokens'].shape[0], forward_only=forward_only)
    if not parallel_state.is_pipeline_last_stage():
        return LossTotals(float('nan'), float('nan'))
    total = torch.stack([r['ctc loss' if encoder_only else 'lm loss'] for r in reports]).sum(dim=0)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return LossTotals(total[0].item(), total[1].item())


def mtp_metrics(model_chunks) -> dict:
    """Per-depth MTP loss and top-1 agreement since the last call, reduced over DP; {} on stages
    without MTP (where core's logging helper would raise KeyError)."""
    metrics = {}
    for language_model in _language_models(model_chunks):
        if language_model.mtp_stats is not None:
            metrics.update(language_model.mtp_stats.reduce(parallel_state.get_data_parallel_group()))
            language_model.mtp_stats.reset()
    return metrics


def ctc_metrics(model_chunks, cfg: SALMConfig) -> dict:
    """CTC loss per target id and infeasible audios since the last call, over DP and to the last
    stage, where the log is written; {} without CTC. Every rank calls it."""
    if not cfg.ctc_enabled:
        return {}
    stats = [salm.ctc_stats for salm in _salms(model_chunks) if salm.ctc_stats is not None]
    groups = [parallel_state.get_data_parallel_group(), parallel_state.get_pipeline_model_parallel_group()]
    metrics = reduce_ctc_stats(stats[0] if stats else None, groups, intermediate=bool(cfg.ctc_intermediate_layer))
    for window in stats:
        window.reset()
    return metrics


def _mean_over(values: torch.Tensor, group) -> torch.Tensor:
    torch.distributed.all_reduce(values, group=group)  # gloo has no ReduceOp.AVG
    return values / group.size()


def moe_metrics(microbatches: int, depths: int) -> dict:
    """The MoE MTP layers' load-balancing loss (before --moe-aux-loss-coeff) per layer call since
    the last call, ``microbatches`` x ``depths`` calls, averaged over DP; {} where no router
    recorded one (coefficient 0, evaluation, stages without MTP). Reduced as core reduces it
    (sum over its reduce group, then averages), but never over PP, where other stages record
    nothing; every rank of the MTP stage records the same names, so the reductions pair up."""
    metrics = {}
    for name, values, reduce_group, avg_group, dp_average in mcore.moe_aux_loss_entries():
        values = values.clone()
        if reduce_group is not None:
            torch.distributed.all_reduce(values, group=reduce_group)
        if avg_group is not None:
            values = _mean_over(values, avg_group)
        if dp_average:
            values = _mean_over(values, parallel_state.get_data_parallel_group())
        metrics[name] = values.sum().item() / (microbatches * depths)
    mcore.clear_moe_aux_losses()
    return metrics
