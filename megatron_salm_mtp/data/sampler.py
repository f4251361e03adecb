"""Data-parallel batch sampler with global-batch consistency and exact resume.

Order of one epoch: a permutation of the dataset drawn from ``(seed, epoch)`` (the same on every
rank), cut to whole global batches (the tail that does not fill one is dropped that epoch; another
permutation next epoch). Global batch ``g`` is positions ``[g*G, (g+1)*G)`` of that order, split into
``G / m`` microbatch groups of ``m`` consecutive positions; group ``q`` goes to DP rank ``q % dp``,
so each step every rank gets ``G / dp`` samples as ``G / (m * dp)`` microbatches.

Why the state is ``consumed_samples`` (global, like Megatron-LM's): it fully determines the position
(epoch, global batch, microbatch), so a run restored from a checkpoint continues with exactly the
batch an uninterrupted run would have seen, at any ``dp_rank``. After microbatch ``k`` of step ``g``
it equals ``g * G + (k + 1) * m * dp``.

Length bucketing (``bucket_window`` > 0, in global batches): within each window of the epoch order,
samples are sorted by length, cut into global batches, and the windows' batches are shuffled, so a
microbatch holds similar lengths (less padding) while batches stay random across the epoch.
"""

from __future__ import annotations

import numpy as np


class DistributedMicroBatchSampler:
    """Yields this DP rank's microbatches (lists of dataset indices) for one epoch per ``iter()``."""

    def __init__(self, num_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 1234, shuffle: bool = True, lengths=None, bucket_window: int = 0,
                 consumed_samples: int = 0):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f'global_batch_size {global_batch_size} must be a multiple of '
                             f'micro_batch_size {micro_batch_size} x dp_size {dp_size}')
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f'dp_rank {dp_rank} outside [0, {dp_size})')
        if num_samples < global_batch_size:
            raise ValueError(f'{num_samples} samples cannot fill one global batch of {global_batch_size}')
        if bucket_window and lengths is None:
            raise ValueError('bucket_window needs per-sample lengths')
        self.num_samples = num_samples
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.seed, self.shuffle = dp_rank, dp_size, seed, shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_window = bucket_window
        self.samples_per_epoch = (num_samples // global_batch_size) * global_batch_size
        self.consumed_samples = consumed_samples
        self._cached_epoch, self._cached_order = None, None

    @property
    def num_microbatches(self) -> int:
        """Microbatches per step on each rank."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    @property
    def epoch(self) -> int:
        return self.consumed_samples // self.samples_per_epoch

    def __len__(self) -> int:
        """Microbatches this rank yields in a full epoch."""
        return self.samples_per_epoch // (self.micro_batch_size * self.dp_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices of ``epoch`` in consumption order (length ``samples_per_epoch``)."""
        if self._cached_epoch == epoch:
            return self._cached_order
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        order = order[: self.samples_per_epoch]
        if self.bucket_window:
            g, w = self.global_batch_size, self.bucket_window * self.global_batch_size
            batches = []
            for s in range(0, len(order), w):
                window = order[s:s + w]
                window = window[np.argsort(self.lengths[window], kind='stable')]
                batches.extend(window[i:i + g] for i in range(0, len(window), g))
            order = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
        self._cached_epoch, self._cached_order = epoch, order
        return order

    def __iter__(self):
        """The rest of the current epoch from ``consumed_samples``; advances it as it yields."""
        epoch = self.epoch
        order = self.epoch_order(epoch)
        m, dp, g = self.micro_batch_size, self.dp_size, self.global_batch_size
        pos = self.consumed_samples - epoch * self.samples_per_epoch
        if pos % (m * dp):
            raise ValueError(f'consumed_samples {self.consumed_samples} is not on a microbatch boundary '
                             f'(multiple of micro_batch_size x dp_size = {m * dp})')
        while pos < self.samples_per_epoch:
            step_start, k = (pos // g) * g, (pos % g) // (m * dp)
            start = step_start + (k * dp + self.dp_rank) * m
            self.consumed_samples += m * dp
            pos += m * dp
            yield order[start:start + m].tolist()

    def state_dict(self) -> dict:
        """What a checkpoint saves. With a prefetching DataLoader save the loader's state instead."""
        return {'consumed_samples': self.consumed_samples, 'epoch': self.epoch, 'seed': self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get('seed', self.seed) != self.seed:
            raise ValueError(f"checkpoint data seed {state['seed']} differs from configured seed {self.seed}")
        self.consumed_samples = int(state['consumed_samples'])
