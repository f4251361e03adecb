"""Manifest lines -> decoding inputs: prompt ids up to the answer, log-mel features, reference.

The prompt is what training fed before the answer (``PromptBuilder.encode(with_answer=False)``,
the same template, system prompt and default task prompt as the checkpoint's run), so the model
sees at decode time exactly the prefix it was trained on. Each manifest is a split named by its
file stem (``test.jsonl`` -> ``test``). Lines whose audio cannot be read are skipped and counted,
with the reasons training uses (``data/dataset.py``).
"""

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.audio import AudioError, AudioFileNotFound, load_audio
from ..data.dataset import AUDIO_TOO_LONG, EMPTY_AUDIO, MISSING_FILE, UNREADABLE_AUDIO, Skip
from ..data.features import log_mel, pad_features
from ..data.frames import HOP_LENGTH, SAMPLE_RATE, audio_tokens, mel_frames
from ..data.loader import DataConfig
from ..data.manifest import Example, read_manifest
from ..data.progress import Progress
from ..data.prompts import PromptBuilder
from ..data.tokenizer import Tokenizer
from .decode import PromptBatch

logger = logging.getLogger(__name__)

END_OF_TURN = {'plain': None, 'llama3': '<|eot_id|>', 'qwen': '<|im_end|>'}


@dataclass
class Utterance:
    source: str  # the manifest
    line: int  # 1-based line in it
    split: str  # the manifest's file stem
    subset: str  # the manifest's ``subset`` field ('all' when absent)
    reference: str
    prompt_ids: list[int]
    features: list[torch.Tensor]  # one [n_mels, T] log-mel per audio
    seconds: float  # audio duration
    fields: dict = dataclasses.field(default_factory=dict)  # the manifest line's other fields (accent...)

    @property
    def where(self) -> str:
        return f'{self.source}:{self.line}'

    def silenced(self) -> 'Utterance':
        """The utterance with each audio replaced by digital silence of its length: the log-mel of
        zero samples (every bin at the features' floor), not zero features, which would be sound.
        Same frames, hence the same placeholders and the same prompt."""
        return dataclasses.replace(self, features=[log_mel(torch.zeros(f.shape[1] * HOP_LENGTH), f.shape[0])
                                                   for f in self.features])


def split_name(manifest: str) -> str:
    return os.path.splitext(os.path.basename(manifest))[0]


def stop_ids(tokenizer: Tokenizer, template: str) -> list[int]:
    """Ids that end an answer: EOS, and the template's end-of-turn marker."""
    ids = [tokenizer.eos_id]
    if END_OF_TURN[template] is not None:
        ids.append(tokenizer.special_id(END_OF_TURN[template]))
    return ids


def _waves(example: Example, max_duration: float | None):
    """The example's audios as 16 kHz waveforms, or the :class:`Skip` that names the bad one
    (skipped as training skips it: missing, unreadable, empty, longer than the run's cap)."""
    waves = []
    for seg in example.audios:
        where = f'{seg.value} ({example.where})'
        try:
            wave = load_audio(seg.value, seg.offset, seg.duration)
        except AudioError as e:
            return Skip(where, MISSING_FILE if isinstance(e, AudioFileNotFound) else UNREADABLE_AUDIO, str(e))
        if mel_frames(len(wave)) == 0:
            return Skip(where, EMPTY_AUDIO, f'{len(wave)} samples')
        if max_duration is not None and len(wave) > max_duration * SAMPLE_RATE:
            return Skip(where, AUDIO_TOO_LONG, f'{len(wave) / SAMPLE_RATE:.2f} s > max_duration {max_duration} s')
        waves.append(wave)
    return waves


def read_utterances(manifest: str, data: DataConfig, tokenizer: Tokenizer,
                    limit: int | None = None) -> tuple[list[Utterance], list[Skip]]:
    """The first ``limit`` lines of ``manifest`` (all by default) as utterances, and the lines
    skipped (each logged with its reason); an error when none is usable."""
    examples = read_manifest(manifest, data.default_prompt)[:limit]
    utterances, skips = example_utterances(examples, data, tokenizer, split_name(manifest), f'reading {manifest}')
    if not utterances:
        reasons = sorted({s.reason for s in skips})
        raise ValueError(f'--manifest {manifest}: no usable utterance among {len(examples)} lines'
                         + (f' ({len(skips)} skipped: {", ".join(reasons)})' if skips else ''))
    return utterances, skips


def example_utterances(examples: Sequence[Example], data: DataConfig, tokenizer: Tokenizer, split: str,
                       task: str) -> tuple[list[Utterance], list[Skip]]:
    """Examples (from a manifest or made on the spot) as utterances of ``split``, and the ones
    skipped (each logged with its reason); ``task`` names the progress line."""
    builder = PromptBuilder(tokenizer, data.prompt_template, data.system_prompt)
    utterances, skips = [], []
    progress = Progress(task, len(examples))
    for example in examples:
        waves = _waves(example, data.max_duration)
        progress.advance()
        if isinstance(waves, Skip):
            logger.warning('skipping %s: %s (%s)', waves.where, waves.reason, waves.detail)
            skips.append(waves)
            continue
        counts = [audio_tokens(mel_frames(len(w)), data.stack) for w in waves]
        prompt = builder.encode(example, counts, with_answer=False).ids
        utterances.append(Utterance(example.source, example.line, split,
                                    str(example.meta.get('subset', 'all')), example.answer_text, prompt,
                                    [log_mel(w, data.n_mels) for w in waves],
                                    sum(len(w) for w in waves) / SAMPLE_RATE, dict(example.meta)))
    return utterances, skips


def make_batch(utterances: Sequence[Utterance], pad_id: int, n_mels: int, device) -> PromptBatch:
    """Right-padded prompts and padded features of ``utterances``, on ``device``."""
    lengths = torch.tensor([len(u.prompt_ids) for u in utterances])
    tokens = torch.full((len(utterances), int(lengths.max())), pad_id, dtype=torch.long)
    for row, utt in enumerate(utterances):
        tokens[row, :len(utt.prompt_ids)] = torch.tensor(utt.prompt_ids)
    features, frames = pad_features([f for u in utterances for f in u.features], n_mels)
    return PromptBatch(tokens.to(device), lengths.to(device), features.to(device), frames.to(device),
                       tuple(len(u.features) for u in utterances), pad_id)
