"""What Megatron-LM's ``pretrain()`` calls: model provider, forward step, dataset provider.

The loss is the plugin's (``model/loss.py``, ``model/mtp.py``): with ``calculate_per_token_loss``
the forward step returns Megatron-LM's ``(loss_sum, num_tokens, report)``, ``finalize_model_grads``
divides by the global supervised-token count, and each MTP depth enters the backward pass with
weight ``lambda/D * N_main/N_k`` from counts over the whole global batch. The plugin's own step
all-reduces those counts before the schedule runs; here the schedule draws the data, so the
forward step does it on the global batch's first microbatch (``data.MicrobatchesWithCounts``),
before that microbatch's forward: the same weights, hence the same gradients.

Per-depth MTP loss and top-1 agreement are reported beside ``lm loss`` as (sum, count) pairs,
which Megatron-LM's training log averages per token over the global batch (``mtp_1 loss``,
``mtp_1 acc``, ...). Megatron-LM's own ``MTPLossLoggingHelper`` stays empty: the plugin replaces
the MTP loss code that feeds it.
"""

from dataclasses import dataclass
from functools import partial

import torch
from megatron.core.num_microbatches_calculator import get_num_microbatches
from megatron.core.utils import get_attr_wrapped_model

from ..config import SALMConfig
from ..data.loader import DataConfig
from ..data.tokenizer import Tokenizer
from ..model.freeze import apply_training_mode
from ..model.loss import masked_token_loss
from ..model.provider import provide_salm
from ..model.salm import SALM
from ..model.specs import resolve_transformer_impl
from ..parallel.setup import fuse_wgrad_accumulation_if_asked
from ..training.forward_step import reduce_over_data_parallel, salm_forward, set_global_mtp_weights
from .args import data_config_from_args, salm_config_from_args
from .data import GLOBAL_BATCH_COUNTS, speech_iterator, validation_data_config

MODEL_INPUTS = ('tokens', 'position_ids', 'labels', 'loss_mask', 'audio_features',
                'audio_feature_lengths')


def mtp_reports(language_model, device: torch.device) -> dict:
    """This microbatch's per-depth (summed CE, count) and (top-1 hits, count); resets the window."""
    stats = language_model.mtp_stats
    loss_sum, count, hits = stats.values.to(device=device, dtype=torch.float32)
    stats.reset()
    reports = {}
    for depth in range(stats.depths):
        reports[f'mtp_{depth + 1} loss'] = torch.stack([loss_sum[depth], count[depth]])
        reports[f'mtp_{depth + 1} acc'] = torch.stack([hits[depth], count[depth]])
    return reports


def salm_loss(loss_mask: torch.Tensor, language_model, output_tensor: torch.Tensor):
    """Megatron-LM's per-token loss convention: (summed CE, supervised tokens, reports)."""
    loss_sum, num_tokens, reports = masked_token_loss(loss_mask, output_tensor)
    if language_model.mtp_stats is not None:
        reports.update(mtp_reports(language_model, loss_sum.device))
    return loss_sum, num_tokens, reports


@dataclass
class SALMProviders:
    """The SALM's settings, bound into the three functions ``pretrain()`` calls."""
    cfg: SALMConfig
    data: DataConfig
    tokenizer: Tokenizer
    train_manifest: str
    valid_manifest: str | None
    training_mode: str

    @classmethod
    def from_args(cls, args) -> 'SALMProviders':
        """From validated Megatron-LM args; records the padded vocabulary on them (Megatron-LM's
        FLOP count and checkpoint checks read it; its own tokenizer is not built)."""
        data = data_config_from_args(args)
        tokenizer = data.make_tokenizer()
        cfg = salm_config_from_args(args, tokenizer)
        args.vocab_size, args.padded_vocab_size = cfg.vocab_size, cfg.padded_vocab_size
        return cls(cfg, data, tokenizer, args.train_manifest, args.valid_manifest, args.training_mode)

    def model_provider(self, pre_process: bool = True, post_process: bool = True,
                       vp_stage: int | None = None, config=None, pg_collection=None) -> SALM:
        """This stage's bare SALM chunk (Megatron-LM moves, casts and wraps it in DDP).

        ``config`` and ``pg_collection`` are what Megatron-LM's ``get_model`` passes: the SALM
        builds its TransformerConfig from SALMConfig, and under ``pretrain()`` the groups in
        ``pg_collection`` are parallel_state's, which the SALM uses."""
        del config, pg_collection
        impl = resolve_transformer_impl(self.cfg.transformer_impl)
        model = provide_salm(self.cfg, impl, pre_process=pre_process, post_process=post_process,
                             vp_stage=vp_stage)
        # Megatron-LM's train loop and train step read the chunk's process groups from its
        # outermost module that has them; the SALM's are its LLM's.
        model.pg_collection = model.language_model.pg_collection
        apply_training_mode(model, self.training_mode)
        fuse_wgrad_accumulation_if_asked(self.cfg, impl, model)
        return model

    def forward_step(self, data_iterator, model):
        """One microbatch: (per-token loss [b, s] on the last stage, the loss function)."""
        batch = next(data_iterator)
        language_model = get_attr_wrapped_model(model, 'language_model')
        counts = batch.get(GLOBAL_BATCH_COUNTS)
        if counts is not None and self.cfg.mtp_depths and language_model.mtp_process:
            set_global_mtp_weights([language_model], reduce_over_data_parallel(counts), self.cfg)
        output, inputs = salm_forward(model, batch, MODEL_INPUTS)
        return output, partial(salm_loss, inputs['loss_mask'], language_model)

    def datasets_provider(self, train_val_test_num_samples):
        """(train, validation, test) iterators for this rank; Megatron-LM's sample targets do not
        apply (the speech sampler runs epoch after epoch until training stops)."""
        del train_val_test_num_samples
        from megatron.training import get_args
        args = get_args()
        train = speech_iterator(self.data, self.train_manifest, self.tokenizer, self.cfg,
                                args.consumed_train_samples, shuffle=True,
                                microbatches_per_batch=get_num_microbatches, augment=True)
        valid = None
        if self.valid_manifest:
            valid = speech_iterator(validation_data_config(self.data, args), self.valid_manifest,
                                    self.tokenizer, self.cfg, args.consumed_valid_samples, shuffle=False)
        return train, valid, None

    # Every rank builds its own iterators (each stage of a DP replica reads the same microbatches),
    # rather than Megatron-LM's default of TP rank 0 only.
    datasets_provider.is_distributed = True
