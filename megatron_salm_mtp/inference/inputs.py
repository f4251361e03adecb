"""Manifest lines -> decoding inputs: prompt ids up to the answer, log-mel features, reference.

The prompt is what training fed before the answer (``PromptBuilder.encode(with_answer=False)``,
the same template, system prompt and default task prompt as the checkpoint's run), so the model
sees at decode time exactly the prefix it was trained on.
"""

from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..data.audio import load_audio
from ..data.features import log_mel, pad_features
from ..data.frames import SAMPLE_RATE, audio_tokens, mel_frames
from ..data.loader import DataConfig
from ..data.manifest import read_manifests
from ..data.prompts import PromptBuilder
from ..data.tokenizer import Tokenizer
from .decode import PromptBatch

END_OF_TURN = {'plain': None, 'llama3': '<|eot_id|>', 'qwen': '<|im_end|>'}


@dataclass
class Utterance:
    where: str  # manifest:line
    subset: str  # the manifest's ``subset`` field ('all' when absent)
    reference: str
    prompt_ids: List[int]
    features: List[torch.Tensor]  # one [n_mels, T] log-mel per audio
    seconds: float  # audio duration


def stop_ids(tokenizer: Tokenizer, template: str) -> List[int]:
    """Ids that end an answer: EOS, and the template's end-of-turn marker."""
    ids = [tokenizer.eos_id]
    if END_OF_TURN[template] is not None:
        ids.append(tokenizer.special_id(END_OF_TURN[template]))
    return ids


def read_utterances(manifest: str, data: DataConfig, tokenizer: Tokenizer) -> List[Utterance]:
    builder = PromptBuilder(tokenizer, data.prompt_template, data.system_prompt)
    utterances = []
    for example in read_manifests(manifest, data.default_prompt):
        waves = [load_audio(seg.value, seg.offset, seg.duration) for seg in example.audios]
        counts = [audio_tokens(mel_frames(len(w)), data.stack) for w in waves]
        prompt = builder.encode(example, counts, with_answer=False).ids
        utterances.append(Utterance(example.where, str(example.meta.get('subset', 'all')),
                                    example.answer_text, prompt,
                                    [log_mel(w, data.n_mels) for w in waves],
                                    sum(len(w) for w in waves) / SAMPLE_RATE))
    if not utterances:
        raise ValueError(f"--manifest {manifest}: no utterance")
    return utterances


def make_batch(utterances: Sequence[Utterance], pad_id: int, n_mels: int, device) -> PromptBatch:
    """Right-padded prompts and padded features of ``utterances``, on ``device``."""
    lengths = torch.tensor([len(u.prompt_ids) for u in utterances])
    tokens = torch.full((len(utterances), int(lengths.max())), pad_id, dtype=torch.long)
    for row, utt in enumerate(utterances):
        tokens[row, :len(utt.prompt_ids)] = torch.tensor(utt.prompt_ids)
    features, frames = pad_features([f for u in utterances for f in u.features], n_mels)
    return PromptBatch(tokens.to(device), lengths.to(device), features.to(device), frames.to(device))
