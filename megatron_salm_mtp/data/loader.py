"""From config to an iterator of microbatches: :class:`DataConfig`, :func:`build_dataloader`.

Why a wrapper around ``torch.utils.data.DataLoader``:

- the checkpointable position must be what training *received*, not what the prefetching sampler
  has already handed to workers; the wrapper counts delivered microbatches;
- skips met inside worker processes come back beside each batch (``CollatorWithSkips``) and are
  counted here, so per-epoch totals cover all workers; the batch itself stays the exact contract dict.

One ``iter()`` runs the rest of the current epoch; at its end a warning (or info line) reports that
epoch's skips, also kept in ``epoch_skip_counts``.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import signal
import weakref
from collections import Counter
from dataclasses import dataclass

import torch

from ..config_checks import ConfigError
from .batching import CollatorWithSkips
from .dataset import SKIP_REASONS, SpeechDataset
from .features import EXACT_AUDIO, AudioPadding
from .frames import SAMPLE_RATE, mel_frames
from .manifest import DEFAULT_TASK_PROMPTS, read_manifests
from .packing import PackedCollatorWithSkips, PackedRows
from .prompts import TEMPLATES, required_special_tokens
from .sampler import DistributedMicroBatchSampler
from .spec_augment import SpecAugment
from .tokenizer import AUDIO_TOKEN, TOKENIZER_TYPES, Tokenizer, build_tokenizer
from .vtlp import VTLP

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Data settings, Megatron-style names (``--seq-length`` -> ``seq_length``). A training run
    sets the fields the model and training sections own (sequence length, batch sizes, seed, mel
    bins, frame stacking, CTC units) from them: ``run_config.SHARED_WITH_DATA``."""

    seq_length: int = 256
    """tokens per row after the shift (a packed row's utterances share them)"""
    micro_batch_size: int = 4
    """rows per microbatch on one DP rank (packed rows, or one utterance each with --no-pack-sequences)"""
    global_batch_size: int = 16
    """across DP ranks and microbatches"""
    num_workers: int = 0
    """DataLoader worker processes per rank"""
    seed: int = 1234
    """shuffling; the same on every rank"""
    tokenizer_type: str = 'byte'
    """byte | huggingface | sentencepiece"""
    tokenizer_model: str | None = None
    """tokenizer.json (or its folder) / SentencePiece .model"""
    audio_token: str = AUDIO_TOKEN
    """placeholder token string (added as a virtual id if absent)"""
    prompt_template: str = 'plain'
    """plain | llama3 | qwen"""
    system_prompt: str | None = None
    """a system turn put before every example that does not open with one"""
    default_prompt: str | None = DEFAULT_TASK_PROMPTS['asr']
    """for ASR lines without a prompt field"""
    n_mels: int = 80
    """80 (Whisper <= v2) or 128 (Whisper large-v3)"""
    stack: int = 4
    """projector frame stacking; sets placeholders per audio"""
    max_duration: float | None = 30.0
    """seconds per audio; longer ones are skipped"""
    strict_data: bool = False
    """stop at the first bad sample instead of skipping it"""
    prescan: bool = True
    """vet every example's header at start (cheap checks)"""
    pad_to_seq_length: bool = True
    """with --no-pack-sequences: pad every microbatch to --seq-length (fixed shapes, needed with
    pipeline parallelism); off: to its longest sample (packed rows always fill --seq-length)"""
    bucket_window: int = 0
    """with --no-pack-sequences: length bucketing over this many global batches (0: off)"""
    audio_pad_multiple: int = 64
    """Each microbatch's audio is padded in time to its longest rounded up to this many mel frames
    (10 ms each; 1: no rounding). The padding is masked, so it changes no output; it bounds the
    distinct shapes the encoder meets, each of which costs cuDNN's fused attention a graph build
    of ~0.1-1 s on its first use."""
    pack_sequences: bool = True
    """Pack several utterances into each row of --seq-length tokens (first-fit over length-sorted
    windows; attention, positions and the MTP chain kept per utterance): no compute spent on
    padding. Micro/global batch sizes and consumed samples count packed rows (Megatron's
    convention). --no-pack-sequences: one utterance per row, padded. Needs --prescan (exact
    lengths). Training data only: validation, evaluation and decoding keep one utterance per row."""
    pack_window: int = 1000
    """With --pack-sequences: utterances sorted and packed together (more: fuller rows, fewer
    random row mates)."""
    # --- SpecAugment (training data only) ---
    spec_augment_freq_masks: int = 0
    """SpecAugment frequency masks per training utterance (0: none); never in validation."""
    spec_augment_freq_width: int = 27
    """Widest frequency mask, in mel bins (each mask's width is uniform in [0, this])."""
    spec_augment_time_masks: int = 0
    """SpecAugment time masks per training utterance (0: none); never in validation."""
    spec_augment_time_width: float = 0.05
    """Widest time mask as a fraction of the utterance's frames (uniform in [0, this x frames])."""
    vtlp_max_warp: float = 0.0
    """Vocal tract length perturbation (training only): each utterance's frequency axis scaled by a
    factor uniform in [1 - this, 1 + this] (0: off; 0.1 is the usual range), so the encoder meets
    every voice with longer and shorter vocal tracts; never in validation."""
    ctc_target_units: str = 'tokens'
    """What the CTC head emits (the model's flag of the same name sets it): tokens, characters or
    phonemes (each line's ``phonemes`` field, :mod:`.ctc_targets`)."""

    def __post_init__(self):
        tokenizers = TOKENIZER_TYPES + ('hf', 'spm')
        checks = [(self.n_mels in (80, 128), f'--n-mels must be 80 or 128, got {self.n_mels}'),
                  (self.stack >= 1, f'--stack must be >= 1, got {self.stack}'),
                  (self.seq_length >= 1, f'--seq-length must be >= 1, got {self.seq_length}'),
                  (self.micro_batch_size >= 1, f'--micro-batch-size must be >= 1, got {self.micro_batch_size}'),
                  (self.global_batch_size >= 1, f'--global-batch-size must be >= 1, got {self.global_batch_size}'),
                  (self.num_workers >= 0, f'--num-workers must be >= 0, got {self.num_workers}'),
                  (self.bucket_window >= 0, f'--bucket-window must be >= 0, got {self.bucket_window}'),
                  (self.audio_pad_multiple >= 1,
                   f'--audio-pad-multiple must be >= 1, got {self.audio_pad_multiple}'),
                  (self.pack_window >= 1, f'--pack-window must be >= 1, got {self.pack_window}'),
                  (not self.pack_sequences or self.prescan,
                   '--pack-sequences (the default) needs --prescan: rows are packed from the exact '
                   'lengths it measures; keep --prescan or add --no-pack-sequences'),
                  (not self.pack_sequences or not self.bucket_window,
                   f'--bucket-window {self.bucket_window} sorts unpacked rows by length: with '
                   '--pack-sequences (the default) every row is filled to --seq-length; drop it or '
                   'add --no-pack-sequences'),
                  (not self.pack_sequences or self.pad_to_seq_length,
                   "--no-pad-to-seq-length pads unpacked rows to their microbatch's longest: with "
                   "--pack-sequences (the default) every row is filled to --seq-length; drop it or "
                   "add --no-pack-sequences"),
                  (self.max_duration is None or self.max_duration > 0,
                   f'--max-duration must be positive, got {self.max_duration}'),
                  (self.spec_augment_freq_masks >= 0,
                   f'--spec-augment-freq-masks must be >= 0, got {self.spec_augment_freq_masks}'),
                  (0 <= self.spec_augment_freq_width <= self.n_mels,
                   f'--spec-augment-freq-width must be in [0, {self.n_mels}] (the mel bins), '
                   f'got {self.spec_augment_freq_width}'),
                  (self.spec_augment_time_masks >= 0,
                   f'--spec-augment-time-masks must be >= 0, got {self.spec_augment_time_masks}'),
                  (0 <= self.spec_augment_time_width <= 1,
                   f'--spec-augment-time-width is a fraction of the utterance, in [0, 1]; '
                   f'got {self.spec_augment_time_width}'),
                  (0 <= self.vtlp_max_warp <= 0.3,
                   f'--vtlp-max-warp must be in [0, 0.3] (a factor of 1 +- this), got {self.vtlp_max_warp}'),
                  (self.prompt_template in TEMPLATES,
                   f"--prompt-template {self.prompt_template!r}: choose {', '.join(TEMPLATES)}"),
                  (self.tokenizer_type in tokenizers,
                   f"--tokenizer-type {self.tokenizer_type!r}: choose {', '.join(tokenizers)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def for_evaluation(self) -> DataConfig:
        """These settings for validation data: one utterance per row, so evaluation is what it was
        without packing (batch sizes count utterances) and a small validation set still fills its
        global batches."""
        return dataclasses.replace(self, pack_sequences=False)

    @property
    def spec_augment(self) -> SpecAugment:
        return SpecAugment(self.spec_augment_freq_masks, self.spec_augment_freq_width,
                           self.spec_augment_time_masks, self.spec_augment_time_width)

    @property
    def vtlp(self) -> VTLP:
        return VTLP(self.vtlp_max_warp)

    def audio_padding(self) -> AudioPadding:
        longest = None if self.max_duration is None else mel_frames(int(self.max_duration * SAMPLE_RATE))
        return AudioPadding(self.audio_pad_multiple, longest)

    def make_tokenizer(self) -> Tokenizer:
        return build_tokenizer(self.tokenizer_type, self.tokenizer_model, self.audio_token,
                               required_special_tokens(self.prompt_template))


def build_dataset(cfg: DataConfig, manifests, tokenizer: Tokenizer | None = None,
                  augment: bool = False) -> SpeechDataset:
    """``augment``: apply the configured VTLP and SpecAugment (training data only)."""
    tokenizer = tokenizer or cfg.make_tokenizer()
    return SpeechDataset(read_manifests(manifests, cfg.default_prompt), tokenizer, cfg.seq_length,
                         cfg.prompt_template, cfg.stack, cfg.n_mels, cfg.max_duration, cfg.strict_data,
                         cfg.system_prompt, cfg.prescan,
                         spec_augment=cfg.spec_augment if augment else None, seed=cfg.seed,
                         vtlp=cfg.vtlp if augment else None,
                         ctc_target_units=cfg.ctc_target_units)


class EpochTaggedBatches:
    """The sampler's microbatches with each index paired with its epoch, ``[(index, epoch), ...]``:
    what the dataset keys SpecAugment's random stream on. The sampler runs one epoch per ``iter()``."""

    def __init__(self, sampler: DistributedMicroBatchSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(index, epoch) for index in batch]


# SIGTERM / SIGUSR1 ask training to save at the next step boundary (training/stop.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _ignore_stop_signals(worker_id: int) -> None:
    """Worker start: a scheduler signals every process of the job, and a worker that died of it
    would crash its rank before the checkpoint. Workers still end with their rank: DataLoader
    workers watch their parent and exit when it is gone, or when it shuts them down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_stop_deaf_workers: weakref.WeakSet[multiprocessing.Process] = weakref.WeakSet()


class _StopDeafDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose worker processes are remembered: they ignore the stop signals, so exit
    has to end them itself (``_kill_stop_deaf_workers``)."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        _stop_deaf_workers.update(getattr(iterator, '_workers', ()))
        return iterator


def _kill_stop_deaf_workers() -> None:
    """At interpreter exit, SIGKILL the stop-deaf workers still alive. multiprocessing's own exit
    handler ends daemonic children with SIGTERM, which they ignore, and would then wait for them
    forever (an uncaught error, or a test, can leave an iterator referenced at exit). Registered at
    import, after multiprocessing's handler, so it runs before it."""
    for worker in list(_stop_deaf_workers):
        if worker.is_alive():
            worker.kill()
            worker.join()


atexit.register(_kill_stop_deaf_workers)


class SpeechDataLoader:
    """Iterates this rank's microbatches (contract dicts, see :mod:`.batching`) one epoch per ``iter()``."""

    def __init__(self, dataset: SpeechDataset | PackedRows, sampler: DistributedMicroBatchSampler, pad_id: int,
                 n_mels: int, num_workers: int = 0, pad_to_seq_length: bool = True, pin_memory: bool = False,
                 audio_padding: AudioPadding = EXACT_AUDIO):
        """``dataset``: utterances, or packed rows of them (``packing.PackedRows``)."""
        self.dataset, self.sampler = dataset, sampler
        collate = (PackedCollatorWithSkips(pad_id, dataset.seq_length, n_mels, audio_padding)
                   if isinstance(dataset, PackedRows)
                   else CollatorWithSkips(pad_id, dataset.seq_length, n_mels, pad_to_seq_length,
                                          audio_padding=audio_padding))
        batches = EpochTaggedBatches(sampler) if dataset.augments else sampler
        self._loader = _StopDeafDataLoader(
            dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0, worker_init_fn=_ignore_stop_signals)
        self.consumed_samples = sampler.consumed_samples
        self._step_samples = sampler.micro_batch_size * sampler.dp_size
        self._epoch_runtime: dict[str, str] = {}  # where -> reason, distinct samples this epoch
        self.epoch_skip_counts: dict[int, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.consumed_samples // self.sampler.samples_per_epoch

    def __iter__(self):
        self.sampler.consumed_samples = self.consumed_samples  # undo any prefetch of an abandoned iterator
        epoch = self.epoch
        if self.consumed_samples % self.sampler.samples_per_epoch == 0:
            self._epoch_runtime = {}
        for batch, skipped in self._loader:
            self._epoch_runtime.update((s.where, s.reason) for s in skipped)
            self.consumed_samples += self._step_samples
            yield batch
        self.epoch_skip_counts[epoch] = counts = self.skip_counts()
        if counts:
            logger.warning('epoch %d: skipped samples by reason: %s', epoch, counts)
        else:
            logger.info('epoch %d: no sample skipped', epoch)
        self._epoch_runtime = {}

    def skip_counts(self) -> dict[str, int]:
        """This epoch so far: the prescan's exclusions plus distinct samples that failed to load (all workers)."""
        total = Counter(self.dataset.prescan_skip_counts()) + Counter(self._epoch_runtime.values())
        return {r: total[r] for r in SKIP_REASONS if total[r]}

    @property
    def _rows_digest(self) -> str | None:
        return self.dataset.digest if isinstance(self.dataset, PackedRows) else None

    def state_dict(self) -> dict:
        state = {'consumed_samples': self.consumed_samples, 'epoch': self.epoch, 'seed': self.sampler.seed}
        if self._rows_digest:
            state['packed_rows'] = self._rows_digest
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get('packed_rows') != self._rows_digest:
            saved, now = (('packed rows' if digest else 'utterances') for digest in (state.get('packed_rows'),
                                                                                     self._rows_digest))
            now = 'other packed rows' if saved == now else now  # both packed, into different rows
            raise ValueError(f"the checkpoint's data position counts {saved}, this run {now}: resume with "
                             "the same --pack-sequences, --pack-window, --seq-length, --seed and manifests "
                             "(or --finetune to start the data anew)")
        self.sampler.load_state_dict(state)
        self.consumed_samples = self.sampler.consumed_samples


def build_dataloader(cfg: DataConfig, manifests, dp_rank: int = 0, dp_size: int = 1, consumed_samples: int = 0,
                     tokenizer: Tokenizer | None = None, shuffle: bool = True,
                     augment: bool = False) -> SpeechDataLoader:
    """Dataset + sampler + loader for one DP rank, resuming at ``consumed_samples``; ``augment``
    (training data only) applies the configured VTLP and SpecAugment. With ``pack_sequences`` the
    sampler's samples are packed rows (``packing.py``)."""
    tokenizer = tokenizer or cfg.make_tokenizer()
    ds = build_dataset(cfg, manifests, tokenizer, augment)
    named = manifests if isinstance(manifests, str) else ','.join(manifests)
    if cfg.pack_sequences:
        ds = PackedRows(ds, cfg.pack_window, cfg.seed)
        if len(ds) < cfg.global_batch_size:
            raise ConfigError(f'{named}: {len(ds)} packed rows (of {len(ds.dataset)} utterances) cannot fill one '
                              f'global batch of {cfg.global_batch_size}: with --pack-sequences (the default) '
                              '--global-batch-size counts rows; lower it or add --no-pack-sequences')
    elif len(ds) < cfg.global_batch_size:
        skips = ds.prescan_skip_counts()
        skipped = (f' ({sum(skips.values())} skipped: {", ".join(f"{r} {n}" for r, n in skips.items())})'
                   if skips else '')
        raise ConfigError(f'{named}: {len(ds)} usable utterances{skipped} cannot fill one global batch of '
                          f'{cfg.global_batch_size} (--global-batch-size)')
    sampler = DistributedMicroBatchSampler(len(ds), cfg.global_batch_size, cfg.micro_batch_size, dp_rank, dp_size,
                                           cfg.seed, shuffle, ds.lengths, cfg.bucket_window, consumed_samples)
    # Pinned batches copy to the GPU without making the host wait for the GPU's queue.
    return SpeechDataLoader(ds, sampler, tokenizer.pad_id, cfg.n_mels, cfg.num_workers, cfg.pad_to_seq_length,
                            pin_memory=torch.cuda.is_available(), audio_padding=cfg.audio_padding())
