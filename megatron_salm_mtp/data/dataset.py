"""Map-style dataset: manifest examples -> token ids, supervision marks and log-mel features.

Bad samples, and why they are handled in two places:

1. A *prescan* at construction runs the cheap checks on every example: file exists, header parses
   and is not truncated, audio non-empty and within ``max_duration``, transcript non-empty, prompt +
   audio placeholders + answer within ``seq_length + 1`` ids (exact, since the header gives the
   sample count and thus the placeholder count), CTC targets that can be made (with
   ``--ctc-target-units phonemes``: a ``phonemes`` field of known characters, :mod:`.ctc_targets`).
   Failing examples never enter the index space, so the sampler's epoch length and batch sizes are
   unaffected. The headers are read once for all ranks and cached beside the manifest
   (:mod:`.header_scan`).
2. What only decoding reveals (a file corrupted after its header or removed since the prescan, NaN
   or infinite samples; or everything, with ``prescan=False``) is caught in ``__getitem__``: the
   sample is replaced by the next good index (``i + 1``, ``i + 2``, ... deterministically, so a
   resumed run still sees the same batches), and the skip travels with the returned sample so the
   main process can count it even when a DataLoader worker found it.

Every skip logs a warning naming the file and the reason; ``skip_counts()`` gives counts per reason.
With ``strict_data=True`` the first bad sample raises :class:`BadSampleError` with that message.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from ..config_checks import ConfigError
from .audio import AudioError, AudioFileNotFound, NonFiniteAudio, load_audio, load_num_samples
from .ctc_targets import MISSING_PHONEMES, UNKNOWN_PHONEME, CTCTargetError, ctc_targets
from .features import log_mel
from .frames import SAMPLE_RATE, audio_tokens, mel_frames
from .header_scan import scan_headers
from .manifest import Example
from .prompts import PromptBuilder
from .spec_augment import SpecAugment
from .tokenizer import Tokenizer
from .vtlp import VTLP

logger = logging.getLogger(__name__)

MISSING_FILE = 'missing_file'
UNREADABLE_AUDIO = 'unreadable_audio'
EMPTY_AUDIO = 'empty_audio'
EMPTY_TRANSCRIPT = 'empty_transcript'
AUDIO_TOO_LONG = 'audio_too_long'
SEQUENCE_TOO_LONG = 'sequence_too_long'
NON_FINITE_AUDIO = 'non_finite_audio'  # NaN/inf samples, or features that overflow
SKIP_REASONS = (MISSING_FILE, UNREADABLE_AUDIO, EMPTY_AUDIO, EMPTY_TRANSCRIPT, AUDIO_TOO_LONG, SEQUENCE_TOO_LONG,
                NON_FINITE_AUDIO, MISSING_PHONEMES, UNKNOWN_PHONEME)  # the last two: --ctc-target-units phonemes


class BadSampleError(ValueError):
    """Raised under ``strict_data``; also used internally to carry a skip reason.

    Constructible from the message alone, as DataLoader workers re-raise it in the main process.
    """

    def __init__(self, where: str, reason: str = '', detail: str = ''):
        super().__init__(f'bad sample {where}: {reason}: {detail}' if reason else where)
        self.where, self.reason, self.detail = where, reason, detail


@dataclass(frozen=True)
class Skip:
    where: str  # "audio path (manifest:line)"
    reason: str
    detail: str


def _where(example: Example, audio_path: str | None = None) -> str:
    """"audio path (manifest:line)", or "manifest:line" for a text-only example."""
    path = audio_path or (example.audios[0].value if example.audios else '')
    return f'{path} ({example.where})' if path else example.where


def _audio_skip(example: Example, path: str, error: AudioError) -> BadSampleError:
    reason = {AudioFileNotFound: MISSING_FILE, NonFiniteAudio: NON_FINITE_AUDIO}.get(type(error), UNREADABLE_AUDIO)
    return BadSampleError(_where(example, path), reason, str(error))


class SpeechDataset(torch.utils.data.Dataset):
    """Examples -> samples ``{"ids", "supervised", "features", "ctc_targets", "skipped"}`` (see
    :mod:`.batching`).

    ``ids`` is the whole sequence (length <= ``seq_length + 1``: the collate shifts it into tokens
    and labels); ``features`` holds one ``[n_mels, T]`` log-mel per audio in order of appearance,
    ``ctc_targets`` one list of ids per audio (:func:`.ctc_targets.ctc_targets`).

    An index may come as ``(index, epoch)`` (``loader.EpochTaggedBatches``): with ``vtlp`` and
    ``spec_augment`` the features are then warped and masked from the streams of
    ``(seed, epoch, index)``.
    """

    def __init__(self, examples: list[Example], tokenizer: Tokenizer, seq_length: int, template: str = 'plain',
                 stack: int = 4, n_mels: int = 80, max_duration: float | None = None, strict_data: bool = False,
                 system_prompt: str | None = None, prescan: bool = True,
                 spec_augment: SpecAugment | None = None, seed: int = 0, ctc_target_units: str = 'tokens',
                 vtlp: VTLP | None = None):
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.spec_augment, self.seed, self.ctc_target_units = spec_augment, seed, ctc_target_units
        self.vtlp = vtlp
        self.seq_length, self.stack, self.n_mels = seq_length, stack, n_mels
        self.max_duration, self.strict_data = max_duration, strict_data
        self.prompts = PromptBuilder(tokenizer, template, system_prompt)
        self._prescan_skips: Counter = Counter()
        self._runtime_skips: dict[str, str] = {}  # where -> reason: distinct samples, however often met
        if prescan:
            self.valid, self.lengths = [], []
            headers = scan_headers(self.examples)  # once for all ranks, cached beside the manifest
            for j, ex in enumerate(self.examples):
                try:
                    self.lengths.append(self._check(ex, headers))
                    self.valid.append(j)
                except BadSampleError as e:
                    self._report(Skip(e.where, e.reason, e.detail), self._prescan_skips)
        else:
            self.valid = list(range(len(self.examples)))
            self.lengths = [self._estimate_length(ex) for ex in self.examples]
        if not self.valid:
            sources = ','.join(sorted({ex.source for ex in self.examples}))
            raise ConfigError(f'{sources}: no usable sample among {len(self.examples)} examples '
                              f'(skips: {dict(self._prescan_skips)})')

    # --- checks -------------------------------------------------------------------------------
    def _report(self, skip: Skip, counter: Counter | None = None) -> None:
        if self.strict_data:
            raise BadSampleError(skip.where, skip.reason, skip.detail)
        if counter is not None:
            counter[skip.reason] += 1
        elif skip.where in self._runtime_skips:
            return  # already warned about in this process
        else:
            self._runtime_skips[skip.where] = skip.reason
        logger.warning('skipping %s: %s (%s)', skip.where, skip.reason, skip.detail)

    def _check_text(self, ex: Example) -> None:
        if not ex.answer_text.strip():
            raise BadSampleError(_where(ex), EMPTY_TRANSCRIPT, 'no answer text')

    def _ctc_targets(self, ex: Example) -> list[list[int]]:
        try:
            return ctc_targets(ex, self.tokenizer, self.ctc_target_units)
        except CTCTargetError as e:
            raise BadSampleError(_where(ex), e.reason, e.detail) from None

    def _check_num_samples(self, ex: Example, path: str, n: int) -> int:
        seconds = n / SAMPLE_RATE
        if mel_frames(n) == 0:
            raise BadSampleError(_where(ex, path), EMPTY_AUDIO, f'{n} samples after slicing')
        if self.max_duration is not None and seconds > self.max_duration:
            raise BadSampleError(_where(ex, path), AUDIO_TOO_LONG,
                                 f'{seconds:.2f} s > max_duration {self.max_duration} s')
        return audio_tokens(mel_frames(n), self.stack)

    def _check_length(self, ex: Example, n_ids: int) -> None:
        if n_ids > self.seq_length + 1:
            raise BadSampleError(_where(ex), SEQUENCE_TOO_LONG,
                                 f'{n_ids - 1} tokens (prompt + audio + answer) > seq_length {self.seq_length}')

    def _check(self, ex: Example, headers: dict) -> int:
        """Header-only validation (``headers``: :func:`.header_scan.scan_headers`); returns the
        sequence length (ids) for bucketing."""
        self._check_text(ex)
        if self.ctc_target_units == 'phonemes':  # the only units a line can lack: no tokenizing twice
            self._ctc_targets(ex)
        counts = []
        for seg in ex.audios:
            info = headers[seg.value]
            if isinstance(info, AudioError):
                raise _audio_skip(ex, seg.value, info)
            counts.append(self._check_num_samples(ex, seg.value, load_num_samples(info, seg.offset, seg.duration)))
        n_ids = len(self.prompts.encode(ex, counts).ids)
        self._check_length(ex, n_ids)
        return n_ids

    def _estimate_length(self, ex: Example) -> int:
        """Bucketing key without touching files: manifest durations (0 where absent)."""
        counts = [audio_tokens(mel_frames(int((s.duration or 0.0) * SAMPLE_RATE)), self.stack) for s in ex.audios]
        return len(self.prompts.encode(ex, counts).ids)

    # --- loading ------------------------------------------------------------------------------
    def _load(self, ex: Example, warp: float = 1.0) -> dict:
        self._check_text(ex)
        targets = self._ctc_targets(ex)
        feats, counts = [], []
        for seg in ex.audios:
            try:
                wav = load_audio(seg.value, seg.offset, seg.duration)
            except AudioError as e:
                raise _audio_skip(ex, seg.value, e) from None
            counts.append(self._check_num_samples(ex, seg.value, len(wav)))
            feats.append(log_mel(wav, self.n_mels, warp))
            if not torch.isfinite(feats[-1]).all():  # finite samples whose power overflows float32
                raise BadSampleError(_where(ex, seg.value), NON_FINITE_AUDIO, 'log-mel features are not finite')
        enc = self.prompts.encode(ex, counts)
        self._check_length(ex, len(enc.ids))
        return {'ids': torch.tensor(enc.ids, dtype=torch.long),
                'supervised': torch.tensor(enc.supervised, dtype=torch.bool),
                'features': feats, 'ctc_targets': targets}

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def augments(self) -> bool:
        """Whether samples are augmented, so indices must carry their epoch."""
        return any(a is not None and a.enabled for a in (self.spec_augment, self.vtlp))

    def _epoch_of(self, epoch: int | None) -> int:
        if epoch is None:
            raise ValueError('SpecAugment and VTLP need (index, epoch) keys: build the loader with '
                             'build_dataloader(..., augment=True)')
        return epoch

    def _warp(self, index: int, epoch: int | None) -> float:
        if self.vtlp is None or not self.vtlp.enabled:
            return 1.0
        return self.vtlp.factor(self.seed, self._epoch_of(epoch), index)

    def _augment(self, sample: dict, index: int, epoch: int | None) -> dict:
        if self.spec_augment is None or not self.spec_augment.enabled:
            return sample
        rng = self.spec_augment.generator(self.seed, self._epoch_of(epoch), index)
        sample['features'] = [self.spec_augment(f, rng) for f in sample['features']]
        return sample

    MAX_SUBSTITUTIONS = 64  # more consecutive failures means storage trouble, not bad samples

    def load_or_skip(self, index: int, epoch: int | None = None) -> tuple[dict | None, Skip | None]:
        """(sample, None), or (None, the reported skip) when ``index`` fails to load; no substitute
        (packed rows leave a failed utterance out instead, ``packing.PackedRows``)."""
        try:
            sample = self._load(self.examples[self.valid[index]], self._warp(index, epoch))
            return self._augment(sample, index, epoch), None
        except BadSampleError as e:
            skip = Skip(e.where, e.reason, e.detail)
            self._report(skip)
            return None, skip

    def report(self, skip: Skip) -> None:
        """Warn about (or, under ``strict_data``, raise for) a sample found bad while loading."""
        self._report(skip)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        skipped = []
        for k in range(min(len(self.valid), self.MAX_SUBSTITUTIONS + 1)):
            sample, skip = self.load_or_skip((i + k) % len(self.valid), epoch)
            if sample is None:
                skipped.append(skip)
                continue
            sample['skipped'] = skipped
            return sample
        raise RuntimeError(f'{len(skipped)} consecutive samples from index {i} failed to load '
                           f'(last: {skipped[-1].where}: {skipped[-1].reason}); is the storage reachable?')

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason seen by this process: the prescan's plus the distinct samples
        that failed in ``__getitem__`` (a bad sample met twice counts once).

        With DataLoader workers, runtime skips happen in the workers; :class:`~.loader.SpeechDataLoader`
        collects them from the batches and reports per-epoch totals.
        """
        total = self._prescan_skips + Counter(self._runtime_skips.values())
        return {r: total[r] for r in SKIP_REASONS if total[r]}

    def prescan_skip_counts(self) -> dict[str, int]:
        return {r: self._prescan_skips[r] for r in SKIP_REASONS if self._prescan_skips[r]}
