"""The CTC head's best-path transcripts (``evaluate --ctc-greedy``): labels against a reference
computed utterance by utterance with the encoder and head called directly, batched rows with
padding and two audios in one row, the spelling of each unit, the flag's errors, and its report
(no step rate: one pass has no steps)."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from megatron_salm_mtp import evaluate
from megatron_salm_mtp.data.ctc_text import CTC_CHARACTERS, character_ids
from megatron_salm_mtp.inference.ctc_greedy import (
    SPELLED_UNITS,
    audio_separator,
    best_path,
    ctc_greedy_decode,
    ctc_text,
)
from megatron_salm_mtp.inference.decode import DecodeStats, PromptBatch
from megatron_salm_mtp.inference.inputs import Utterance
from megatron_salm_mtp.inference.report import mode_report
from megatron_salm_mtp.model.provider import provide_salm
from megatron_salm_mtp.model.specs import LOCAL
from tests.support.parallel_utils import tiny_config

BLANK = 9


@pytest.mark.parametrize('classes, labels', [
    ([BLANK, 1, 1, BLANK, 1, 2, 2, BLANK], [1, 1, 2]),  # a blank between repeats keeps both
    ([3, 3, 3], [3]),
    ([BLANK] * 4, []),
    ([], []),
    ([0, BLANK, 0, 0, 5, BLANK, BLANK, 5], [0, 0, 5, 5]),
])
def test_best_path(classes, labels):
    assert best_path(classes, BLANK) == labels


def test_spelling_of_each_unit():
    class Pieces:
        def decode(self, ids):
            return '|'.join(map(str, ids))

    assert ctc_text(character_ids("Call 5, o'clock!"), 'characters', None) == "call 5 o'clock"
    assert ctc_text([4, 7], 'tokens', Pieces()) == '4|7'
    assert audio_separator('characters') == [CTC_CHARACTERS.index(' ')] and audio_separator('tokens') == []


def _reference(model, features: torch.Tensor, frames: int) -> list[int]:
    """One audio alone, unpadded: the head's argmax per encoder frame, then merged and blank-free."""
    with torch.no_grad():
        encoded = model.audio_encoder(features[None, :, :frames], torch.tensor([frames]))
        classes = model.ctc_head(encoded)[0].argmax(-1).tolist()
    blank = model.ctc_head.out_features - 1
    merged = [c for c, _ in itertools.groupby(classes)]
    return [c for c in merged if c != blank]


def test_batched_rows_match_each_audio_alone(single_rank_parallel):
    torch.manual_seed(0)
    cfg = tiny_config(mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    model = provide_salm(cfg, LOCAL).eval()
    # Untrained weights emit a near-uniform path; scale the head so its argmax varies frame to frame.
    model.ctc_head.weight.data.mul_(50.0)
    frames = [40, 17, 33, 25]
    features = torch.randn(len(frames), cfg.num_mel_bins, max(frames))
    for row, n in enumerate(frames):
        features[row, :, n:] = 0.0
    batch = PromptBatch(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, dtype=torch.long), features,
                        torch.tensor(frames), audios_per_row=(1, 2, 1))
    separator = audio_separator('characters')
    rows, stats = ctc_greedy_decode(model, batch, separator)
    alone = [_reference(model, features[i], n) for i, n in enumerate(frames)]
    assert any(len(a) > 1 for a in alone)  # the check below compares real paths, not empty ones
    assert rows == [alone[0], alone[1] + separator + alone[2], alone[3]]
    assert len(stats) == 3 and stats[0].encode_seconds > 0 and stats[0].verify_steps == 0


def test_the_ctc_modes_need_a_ctc_head_they_can_use():
    class Parser:
        def error(self, message):
            raise SystemExit(message)

    class Args:
        load = 'ckpt'

    check = evaluate.check_ctc_head
    with pytest.raises(SystemExit, match='--ctc-greedy: the checkpoint in --load ckpt has no CTC head'):
        check(Parser(), Args(), tiny_config(ctc_loss_weight=0.0), '--ctc-greedy', SPELLED_UNITS)
    with pytest.raises(SystemExit, match='emits phonemes, which it cannot use .it needs characters or tokens'):
        check(Parser(), Args(), tiny_config(ctc_loss_weight=0.3, ctc_target_units='phonemes'), '--ctc-greedy',
              SPELLED_UNITS)
    check(Parser(), Args(), tiny_config(ctc_loss_weight=0.3, ctc_target_units='tokens'), '--ctc-greedy', SPELLED_UNITS)
    with pytest.raises(SystemExit, match='--ctc-joint-weight: the CTC head in --load ckpt emits tokens'):
        check(Parser(), Args(), tiny_config(ctc_loss_weight=0.3, ctc_target_units='tokens'), '--ctc-joint-weight',
              ('characters',))


def test_a_stage_one_checkpoint_is_told_apart():
    class Parser:
        def error(self, message):
            raise SystemExit(message)

    args = SimpleNamespace(load='ckpt', speculative=False, audio_ablation=False, ctc_joint_weight=None,
                           out_manifest=None)
    stage_one = SimpleNamespace(training_mode='encoder_ctc', cfg=tiny_config(ctc_target_units='characters'))
    assert evaluate.check_stage_one(Parser(), args, stage_one)
    assert not evaluate.check_stage_one(Parser(), args, SimpleNamespace(training_mode='joint', cfg=None))
    joint = SimpleNamespace(**{**vars(args), 'ctc_joint_weight': [0.3]})
    with pytest.raises(SystemExit, match='--ctc-joint-weight: --load ckpt is a stage-1 checkpoint'):
        evaluate.check_stage_one(Parser(), joint, stage_one)
    phonemes = SimpleNamespace(training_mode='encoder_ctc', cfg=tiny_config(ctc_target_units='phonemes'))
    with pytest.raises(SystemExit, match='--load ckpt: a stage-1 checkpoint .* emits phonemes: no spelling'):
        evaluate.check_stage_one(Parser(), args, phonemes)


def test_the_ctc_mode_reports_no_step_rate():
    """One pass of the head has no steps after a first token: blank paths (no labels) used to
    give a negative step rate."""
    utterances = [Utterance('m.jsonl', i + 1, 'test', 'digits', 'one two', [1], [torch.zeros(80, 8)], 1.0)
                  for i in range(2)]
    stats = [DecodeStats(), DecodeStats()]
    stats[0].encode_seconds = 0.5
    figures = mode_report(utterances, ['', 'one two'], [[], [4, 5]], stats, 0.6, stepwise=False)
    assert figures['step_seconds'] is None and figures['step_tokens_per_s'] is None
    assert figures['decode_tokens_per_s'] == pytest.approx(2 / 0.6) and figures['wer'] == pytest.approx(0.5)
    greedy = mode_report(utterances, ['one', 'one two'], [[4, 2], [4, 5, 2]], stats, 0.6)
    assert greedy['step_tokens_per_s'] == pytest.approx(3 / 0.1)
