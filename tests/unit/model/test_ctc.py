"""CTC on the audio encoder, piece by piece: data-side targets, host lengths and feasibility, the
loss, the weight, the flag's checks. Gradients under every layout: test_parallel_gradients.py."""

import pytest
import torch
import torch.nn.functional as F

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.data.batching import Collator
from megatron_salm_mtp.data.ctc_text import CTC_CHARACTERS, character_ids
from megatron_salm_mtp.data.dataset import ctc_targets
from megatron_salm_mtp.data.manifest import parse_line
from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from megatron_salm_mtp.model.ctc import (
    CTCLengths,
    ctc_head,
    ctc_lengths,
    ctc_loss_sum,
    ctc_loss_weight,
    required_frames,
)
from megatron_salm_mtp.model.host_inputs import prepare_microbatch
from tests.support.parallel_utils import speech_batch, tiny_config

TOK = ByteTokenizer()


def _example(fields: str):
    return parse_line('{"audio_filepath": "a.wav", "text": "hi there"' + fields + '}', 'm.jsonl', 1)


def test_targets_are_the_transcript_of_one_audio():
    assert ctc_targets(_example(''), TOK) == [list(b'hi there')]
    assert ctc_targets(_example(', "prompt": "Say what you hear."'), TOK) == [list(b'hi there')]
    assert ctc_targets(_example(', "taskname": "ast", "target_lang": "de"'), TOK) == [[]]
    two_audios = parse_line('{"conversations": [{"from": "User", "type": "audio", "value": "a.wav"}, '
                            '{"from": "User", "type": "audio", "value": "b.wav"}, '
                            '{"from": "Assistant", "type": "text", "value": "both"}]}', 'm.jsonl', 2)
    assert ctc_targets(two_audios, TOK) == [[], []]


def test_collate_pads_targets_per_audio():
    samples = [{'ids': torch.arange(5), 'supervised': torch.ones(5, dtype=torch.bool),
                'features': [torch.zeros(80, n)], 'ctc_targets': [target]}
               for n, target in ((30, [4, 5, 6]), (20, []))]
    batch = Collator(TOK.pad_id, 8)(samples)
    assert batch['ctc_targets'].tolist() == [[4, 5, 6], [0, 0, 0]]
    assert batch['ctc_target_lengths'].tolist() == [3, 0]


def test_feasibility_counts_the_blanks_between_repeats():
    assert required_frames([1, 1, 2, 2, 2, 3]) == 6 + 3
    mel = torch.tensor([20, 20, 20, 20])  # 10 encoder frames each
    targets = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0],
                            [1] * 6 + [0] * 5,  # 6 ids + 5 blanks: 11 > 10 frames
                            [1, 2] * 5 + [0],  # 10 ids, no repeat: fits exactly
                            [3] * 11])  # more ids than frames
    lengths = ctc_lengths(mel, targets, torch.tensor([3, 6, 10, 11]))
    assert lengths == CTCLengths([10] * 4, [3, 0, 10, 0], 2)
    # The kernel agrees: exactly the refused ones have an infinite loss.
    log_probs = torch.randn(10, 4, 8).log_softmax(-1)
    losses = F.ctc_loss(log_probs, targets, [10] * 4, [3, 6, 10, 11], blank=7, reduction='none')
    assert torch.isinf(losses).tolist() == [False, True, False, True]


def test_loss_sums_only_audios_with_targets():
    torch.manual_seed(0)
    head = ctc_head(16, 10, std=0.5, dtype=torch.float32)
    frames = torch.randn(3, 12, 16)
    targets = torch.tensor([[1, 2, 3], [4, 0, 0], [0, 0, 0]])
    lengths = CTCLengths([12, 9, 12], [3, 1, 0], 0)
    total = ctc_loss_sum(head, frames, targets, lengths)
    log_probs = head(frames).log_softmax(-1)
    expected = sum(F.ctc_loss(log_probs[i, :t], targets[i, :n], [t], [n], blank=10, reduction='sum')
                   for i, (t, n) in enumerate(((12, 3), (9, 1))))
    torch.testing.assert_close(total, expected)


def test_weight_rescales_to_per_target_token_and_survives_no_targets():
    n_main, n_ctc = torch.tensor(40.0, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)
    weight = ctc_loss_weight(n_main, n_ctc, 0.5)
    assert weight.item() == pytest.approx(0.5 * 40 / 10)
    assert ctc_loss_weight(torch.tensor(40.0), torch.tensor(0.0), 0.5).item() == 0.0


def test_prepare_microbatch_checks_the_ctc_keys():
    cfg = tiny_config(ctc_loss_weight=0.3)
    batch = speech_batch(cfg, 4, seed=2)
    prepared = prepare_microbatch(batch, cfg)
    assert prepared['ctc_lengths'].infeasible == 2  # samples 2 and 3 of parallel_utils.ctc_targets
    assert prepare_microbatch(batch, tiny_config()).get('ctc_lengths') is None  # off: nothing done
    with pytest.raises(ValueError, match='ctc_targets'):
        prepare_microbatch({k: v for k, v in batch.items() if not k.startswith('ctc')}, cfg)
    too_big = dict(batch, ctc_targets=batch['ctc_targets'].clone().fill_(cfg.vocab_size))
    with pytest.raises(ValueError, match='CTC blank'):
        prepare_microbatch(too_big, cfg)


def test_flag_checks():
    with pytest.raises(ConfigError, match='--ctc-loss-weight'):
        tiny_config(ctc_loss_weight=-1.0).validate()
    with pytest.raises(ConfigError, match='--freeze-audio-encoder'):
        tiny_config(ctc_loss_weight=0.3, freeze_audio_encoder=True).validate()
    with pytest.raises(ConfigError, match='--ctc-intermediate-layer 1 feeds the CTC head'):
        tiny_config(encoder_num_layers=2, ctc_intermediate_layer=1).validate()
    for layer in (2, -1):
        with pytest.raises(ConfigError, match=rf'--ctc-intermediate-layer {layer} must be in 1\.\.1'):
            tiny_config(ctc_loss_weight=0.3, encoder_num_layers=2, ctc_intermediate_layer=layer).validate()
    for weight in (0.0, 1.0, float('nan')):
        with pytest.raises(ConfigError, match='--ctc-intermediate-weight'):
            tiny_config(ctc_loss_weight=0.3, encoder_num_layers=2, ctc_intermediate_layer=1,
                        ctc_intermediate_weight=weight).validate()
    tiny_config(ctc_loss_weight=0.3, encoder_num_layers=2, ctc_intermediate_layer=1).validate()


def test_character_targets_are_the_normalised_transcript():
    assert ''.join(CTC_CHARACTERS[i] for i in character_ids("Call 5 5 1! It's  O'Brien-Smith.")) == \
        "call 5 5 1 it's o'brien smith"
    example = parse_line('{"audio_filepath": "a.wav", "duration": 1.0, "text": "Hi, Bob"}', 'm.jsonl', 1)
    assert ctc_targets(example, ByteTokenizer(), 'characters') == [character_ids('hi bob')]


def test_character_units_size_the_head_and_bound_the_targets():
    cfg = tiny_config(ctc_loss_weight=0.3, ctc_target_units='characters')
    assert cfg.ctc_vocab_size == len(CTC_CHARACTERS) == 38
    batch = speech_batch(cfg, 2, seed=1)
    batch['ctc_targets'] = torch.full_like(batch['ctc_targets'], len(CTC_CHARACTERS))
    with pytest.raises(ValueError, match='outside the CTC head'):
        prepare_microbatch(batch, cfg)
