"""Speech data for Megatron-LM's ``pretrain()``: the plugin's manifests, dataset and sampler.

Megatron-LM's own loaders cannot collate speech samples (variable audio, prompt templates), so
the dataset provider returns ready iterators (``--dataloader-type external``) over the plugin's
``SpeechDataLoader``. They start at Megatron-LM's ``consumed_train_samples`` /
``consumed_valid_samples``, which a resumed run has restored from its checkpoint before the
provider is called, so a resumed run continues with the batches an uninterrupted one would see.

The MTP weights of one global batch need its supervised-token counts before its first forward
(``model/mtp.py``); under ``pretrain()`` the schedule draws microbatches one at a time, so
:class:`MicrobatchesWithCounts` reads each global batch's microbatches ahead and attaches this
rank's counts to the first of them. The forward step all-reduces them over DP (``providers.py``).
Every microbatch also gets its host-side facts (``model/host_inputs.py``).
"""

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from megatron.core import parallel_state

from ..config import SALMConfig
from ..data.loader import DataConfig, SpeechDataLoader, build_dataloader
from ..data.tokenizer import Tokenizer
from ..model.host_inputs import prepare_microbatch
from ..model.mtp import supervised_counts

GLOBAL_BATCH_COUNTS = 'global_batch_supervised_counts'
"""Key of the [1 + D] local supervised counts, on the first microbatch of each global batch."""


def endless(loader: SpeechDataLoader) -> Iterator[dict]:
    """Microbatches epoch after epoch (the sampler draws a new order for each)."""
    while True:
        yield from loader


class MicrobatchesWithCounts:
    """Microbatches in order; the first of every global batch carries its local supervised counts.

    ``microbatches_per_batch()`` is asked at every global batch (Megatron-LM's batch-size ramp-up
    may change it between steps)."""

    def __init__(self, microbatches: Iterable[dict], microbatches_per_batch: Callable[[], int],
                 cfg: SALMConfig):
        self.source = iter(microbatches)
        self.microbatches_per_batch = microbatches_per_batch
        self.cfg = cfg
        self.pending = deque()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self.pending:
            group = [prepare_microbatch(next(self.source), self.cfg)
                     for _ in range(self.microbatches_per_batch())]
            counts = supervised_counts(group, self.cfg.mtp_depths, self.cfg.audio_token_id,
                                       self.cfg.mtp_mask_placeholder_paths)
            group[0] = dict(group[0], **{GLOBAL_BATCH_COUNTS: counts})
            self.pending.extend(group)
        return self.pending.popleft()


def _microbatches_per_batch(global_batch_size: int, micro_batch_size: int) -> Callable[[], int]:
    dp_size = parallel_state.get_data_parallel_world_size()
    return lambda: global_batch_size // (micro_batch_size * dp_size)


def speech_iterator(data: DataConfig, manifests: str, tokenizer: Tokenizer, cfg: SALMConfig,
                    consumed_samples: int, shuffle: bool,
                    microbatches_per_batch: Callable[[], int] | None = None,
                    augment: bool = False) -> MicrobatchesWithCounts:
    """This DP rank's microbatches of the comma-separated ``manifests``, from ``consumed_samples``;
    ``augment`` (training data) applies the configured SpecAugment."""
    loader = build_dataloader(data, manifests.split(','), parallel_state.get_data_parallel_rank(),
                              parallel_state.get_data_parallel_world_size(), consumed_samples,
                              tokenizer=tokenizer, shuffle=shuffle, augment=augment)
    per_batch = microbatches_per_batch or _microbatches_per_batch(data.global_batch_size,
                                                                  data.micro_batch_size)
    return MicrobatchesWithCounts(endless(loader), per_batch, cfg)


def validation_data_config(data: DataConfig, args) -> DataConfig:
    """Megatron-LM evaluates with ``--eval-micro-batch-size`` / ``--eval-global-batch-size``
    (defaulting to the training sizes), one utterance per row (``DataConfig.for_evaluation``)."""
    return dataclasses.replace(
        data.for_evaluation(),
        micro_batch_size=getattr(args, 'eval_micro_batch_size', None) or data.micro_batch_size,
        global_batch_size=getattr(args, 'eval_global_batch_size', None) or data.global_batch_size)
