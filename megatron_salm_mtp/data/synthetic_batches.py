"""Random batches in the model's batch contract, for benchmarks (no files, no decoding).

A speech sample is [prompt text | audio placeholders | answer | padding]: ``audio_fraction`` of the
sequence is audio, ``answer_fraction`` is supervised. ``text_only`` gives the LLM-alone shape with
every position supervised (the baseline the GPU README measures).
"""

import torch

from .batching import pad_targets
from .frames import HOP_LENGTH, SAMPLE_RATE, audio_tokens, encoder_frames


def synthetic_batch(batch_size: int, seq_length: int, vocab_size: int, audio_token_id: int,
                    num_mel_bins: int, frame_stack: int, audio_fraction: float = 0.6,
                    answer_fraction: float = 0.25, text_only: bool = False, seed: int = 0,
                    max_mel_frames: int = 3000) -> dict:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_length + 1), generator=gen)
    tokens[tokens == audio_token_id] = 0
    loss_mask = torch.zeros(batch_size, seq_length + 1)
    features, lengths, ctc_targets = [], [], []
    ctc_gen = torch.Generator().manual_seed(seed + 1)  # leaves the batch's own stream as it was
    if text_only:
        loss_mask[:, 1:] = 1
    else:
        # Mel frames filling that share, cut into utterances of at most 30 s (Whisper's window):
        # a long prompt becomes several audio turns, placed one after the other.
        frames = int(audio_fraction * seq_length * frame_stack * 2)
        turns = -(-frames // max_mel_frames)
        per_turn = frames // turns
        run = audio_tokens(per_turn, frame_stack)
        answer = int(answer_fraction * seq_length)
        for row in range(batch_size):
            position = 4
            for _ in range(turns):
                tokens[row, position:position + run] = audio_token_id
                position += run
                features.append(torch.randn(num_mel_bins, per_turn, generator=gen))
                lengths.append(per_turn)
                # a transcript per audio for the CTC head, at about a quarter of its frames
                ctc_targets.append(torch.randint(0, vocab_size, (encoder_frames(per_turn) // 4 + 1,),
                                                 generator=ctc_gen).tolist())
            loss_mask[row, position + 2:position + 2 + answer] = 1
    batch = {'tokens': tokens[:, :-1].contiguous(), 'labels': tokens[:, 1:].contiguous(),
             'loss_mask': loss_mask[:, 1:].contiguous(),
             'position_ids': torch.arange(seq_length).repeat(batch_size, 1)}
    if features:
        batch['audio_features'] = torch.stack(features)
        batch['audio_feature_lengths'] = torch.tensor(lengths)
    else:
        batch['audio_features'] = torch.zeros(0, num_mel_bins, 0)
        batch['audio_feature_lengths'] = torch.zeros(0, dtype=torch.long)
    batch['ctc_targets'], batch['ctc_target_lengths'] = pad_targets(ctc_targets)
    return batch


def audio_seconds(batch: dict) -> float:
    return float(batch['audio_feature_lengths'].sum()) * HOP_LENGTH / SAMPLE_RATE
