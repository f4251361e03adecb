"""Greedy decoding steered by the CTC head (``inference/ctc_joint.py``, ``decode.joint_ctc_decode``):
the characters a row hands the CTC scorer are the spelling of the text it wrote (byte and
SentencePiece tokenizers), the CTC head overrules a mildly wrong LLM and holds back a stop token
while the audio holds more, a vanishing weight decodes as greedy does (with the layer mix too:
the one encoder pass the head scores is the one spliced), the audio is encoded once per batch, and
batched rows decode as each row alone."""

import pytest
import torch

from megatron_salm_mtp.data.ctc_text import CTC_CHARACTERS, character_ids
from megatron_salm_mtp.data.tokenizer import ByteTokenizer, build_tokenizer
from megatron_salm_mtp.data.train_tokenizer import train_tokenizer
from megatron_salm_mtp.inference.ctc_beam import joint_ctc_beam_decode
from megatron_salm_mtp.inference.ctc_joint import JointCTCChooser, token_spelling
from megatron_salm_mtp.inference.ctc_prefix import CTCPrefixScorer
from megatron_salm_mtp.inference.decode import PromptBatch, greedy_decode, joint_ctc_decode
from tests.support.data_fixtures import write_manifest
from tests.support.inference_fixtures import EOS_ID, random_prompts, row_of, tiny_salm, written_by

TEXTS = ["Hello, world!  It's 5 o'clock.", ' leading and trailing ', 'a--b...c', 'UPPER lower 4 2',
         'Grüße wörld', '']
BLANK = len(CTC_CHARACTERS)


class RecordingScorer:
    """Stands in for ``CTCPrefixScorer``: scores every candidate 0 and records the labels of the
    chosen ones, so the LLM's logits alone decide and the test reads what CTC would have scored."""

    def __init__(self, rows: int):
        self.score = torch.zeros(rows, dtype=torch.float64)
        self.last = torch.full((rows,), -1)  # the last label taken, as the real scorer keeps it
        self.spelled = [[] for _ in range(rows)]

    def extend(self, labels, counts):
        return torch.zeros(counts.shape, dtype=torch.float64), (labels, counts)

    def final(self):
        return torch.zeros_like(self.score)

    def advance(self, states, scores, choice, rows=None):
        assert rows is None  # greedy: each row takes one of its own candidates
        labels, counts = states
        for row, k in enumerate(choice.tolist()):
            self.spelled[row] += labels[row, k, :counts[row, k]].tolist()
            self.last[row] = self.spelled[row][-1] if self.spelled[row] else -1


def _forced(chooser, vocab: int, sequences: list[list[int]]) -> list[list[int]]:
    """Drive ``chooser`` with logits that make each row's next token the next of its sequence."""
    steps = max(len(s) for s in sequences)
    chosen = [[] for _ in sequences]
    for step in range(steps):
        logits = torch.zeros(len(sequences), vocab)
        for row, sequence in enumerate(sequences):
            logits[row, sequence[step] if step < len(sequence) else EOS_ID] = 100.0
        for row, token in enumerate(chooser(logits).tolist()):
            chosen[row].append(token)
    return chosen


def _sentencepiece(tmp_path):
    pytest.importorskip('sentencepiece')
    words = ('send it to arjun patel the code is one four seven please call maria lopez about the meeting '
             "on tuesday it's five o'clock").split()
    rows = [{'audio_filepath': f'{i}.wav', 'text': ' '.join(words[(i * 7 + k) % len(words)] for k in range(8))}
            for i in range(200)]
    out = str(tmp_path / 'tok.model')
    train_tokenizer([write_manifest(tmp_path / 'train.jsonl', rows)], 300, out)
    return build_tokenizer('sentencepiece', out)


@pytest.mark.parametrize('kind', ['byte', 'sentencepiece'])
def test_the_labels_handed_to_ctc_spell_the_text_written(kind, tmp_path):
    tokenizer = ByteTokenizer() if kind == 'byte' else _sentencepiece(tmp_path)
    vocab = tokenizer.vocab_size
    sequences = [tokenizer.encode(t) for t in TEXTS]
    scorer = RecordingScorer(len(TEXTS))
    stop = torch.zeros(vocab, dtype=torch.bool)
    chooser = JointCTCChooser(scorer, token_spelling(tokenizer, vocab, 'cpu'), 0.5, stop)
    chosen = _forced(chooser, vocab, sequences)
    assert [c[:len(s)] for c, s in zip(chosen, sequences)] == sequences
    for row, sequence in enumerate(sequences):
        assert scorer.spelled[row] == character_ids(tokenizer.decode(sequence)), TEXTS[row]


def _peaked(text: str, frames_per_label: int = 3) -> torch.Tensor:
    """CTC log-probabilities [1, T, C] that spell ``text``: each character for a frame, then blanks."""
    rows = []
    for label in character_ids(text):
        for frame in range(frames_per_label):
            row = torch.full((BLANK + 1,), -12.0)
            row[label if frame == 0 else BLANK] = 0.0
            rows.append(row)
    return torch.stack(rows)[None].log_softmax(-1)


def _choices(text: str, weight: float, steps: list[dict[str, float]], frames_per_label: int = 3) -> str:
    """The text chosen by joint decoding over a CTC head that heard ``text`` and an LLM whose
    logits at each step are ``steps`` (characters, or 'eos'; others at 0)."""
    tokenizer = ByteTokenizer()
    log_probs = _peaked(text, frames_per_label)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([log_probs.shape[1]]), BLANK)
    stop = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    stop[EOS_ID] = True
    chooser = JointCTCChooser(scorer, token_spelling(tokenizer, tokenizer.vocab_size, 'cpu'), weight, stop)
    return written_by(chooser, steps)


def test_the_ctc_head_overrules_a_mildly_wrong_llm_and_holds_back_its_stop():
    steps = [{'a': 5.0}, {'c': 6.0, 'b': 5.0}, {'eos': 6.0, 'd': 5.0}, {'eos': 6.0}]
    assert _choices('abd', 0.5, steps) == 'abd<eos>'
    assert _choices('abd', 0.01, steps) == 'ac<eos>'  # a small weight leaves the LLM's choice
    assert _choices('ab', 0.5, steps) == 'ab<eos>'  # the audio ends: the stop is taken


def test_text_the_audio_cannot_hold_leaves_the_choice_to_the_llm():
    """One frame holds one character: past it every candidate is impossible for the head (and
    the stop is not among them), so the LLM's choices stand."""
    ranked = {c: 10.0 - i for i, c in enumerate('abcdefgh')}
    steps = [ranked, ranked, {**ranked, 'b': 11.0}, ranked]
    assert _choices('a', 0.5, steps, frames_per_label=1) == 'aaba'


def test_a_vanishing_weight_decodes_as_greedy(single_rank_parallel):
    model = tiny_salm(seed=0, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    batch = random_prompts(model.cfg, [30, 57, 41], seed=1)
    vocab = model.cfg.vocab_size
    greedy, _ = greedy_decode(model, batch, 10, [EOS_ID], vocab)
    spelling = token_spelling(ByteTokenizer(), vocab, 'cpu')
    joint, stats = joint_ctc_decode(model, batch, 10, [EOS_ID], vocab, 1e-12, spelling)
    assert joint == greedy and sum(s.verify_emitted for s in stats) == sum(map(len, joint)) - len(joint)


def test_a_layer_mix_model_splices_the_shared_encoder_pass_as_greedy_encodes(single_rank_parallel):
    """The steered decoders splice the one encoder pass they also score with; with the layer mix
    it must carry the lower layers the projector reads, or the prefill would differ from greedy's."""
    model = tiny_salm(seed=0, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters',
                      encoder_num_layers=3, encoder_layer_mix=True)
    model.audio_projector.layer_weights.data.copy_(torch.tensor([2.0, -1.0, 0.5]))
    batch = random_prompts(model.cfg, [30, 57, 41], seed=1)
    vocab = model.cfg.vocab_size
    greedy, _ = greedy_decode(model, batch, 10, [EOS_ID], vocab)
    spelling = token_spelling(ByteTokenizer(), vocab, 'cpu')
    assert joint_ctc_decode(model, batch, 10, [EOS_ID], vocab, 1e-12, spelling)[0] == greedy
    assert joint_ctc_beam_decode(model, batch, 10, [EOS_ID], vocab, 1e-12, spelling, 1)[0] == greedy


@pytest.mark.parametrize('beam_size', [None, 3])
@pytest.mark.parametrize('mix', [False, True])
def test_the_audio_is_encoded_once_per_batch(single_rank_parallel, beam_size, mix):
    """Once for the CTC head and every hypothesis' prefill; the beam's copies of a pass with the
    layer mix carry every layer (otherwise the projector's mix would fail on mismatched rows)."""
    model = tiny_salm(seed=2, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters',
                      encoder_num_layers=3 if mix else 1, encoder_layer_mix=mix)
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    vocab = model.cfg.vocab_size
    spelling = token_spelling(ByteTokenizer(), vocab, 'cpu')
    encoded_rows = []
    hook = model.audio_encoder.conv1.register_forward_hook(lambda _m, args, _out: encoded_rows.append(len(args[0])))
    try:
        if beam_size is None:
            joint_ctc_decode(model, batch, 6, [EOS_ID], vocab, 0.7, spelling)
        else:
            joint_ctc_beam_decode(model, batch, 6, [EOS_ID], vocab, 0.7, spelling, beam_size)
    finally:
        hook.remove()
    assert encoded_rows == [3]


def test_batched_rows_decode_as_each_row_alone(single_rank_parallel):
    model = tiny_salm(seed=2, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    model.ctc_head.weight.data.mul_(30.0)  # a head whose prefix scores differ enough to steer
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    vocab = model.cfg.vocab_size
    spelling = token_spelling(ByteTokenizer(), vocab, 'cpu')
    joint, _ = joint_ctc_decode(model, batch, 12, [EOS_ID], vocab, 0.7, spelling)
    greedy, _ = greedy_decode(model, batch, 12, [EOS_ID], vocab)
    assert joint != greedy  # the head steered at least one row
    for row in range(3):
        alone, _ = joint_ctc_decode(model, row_of(batch, row), 12, [EOS_ID], vocab, 0.7, spelling)
        assert alone[0] == joint[row], row


def test_rows_of_other_than_one_audio_are_refused(single_rank_parallel):
    model = tiny_salm(seed=0, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    batch = random_prompts(model.cfg, [30, 41], seed=1)
    two = PromptBatch(batch.tokens[:1], batch.lengths[:1], batch.audio_features, batch.audio_feature_lengths, (2,))
    with pytest.raises(ValueError, match='joint CTC decoding needs one audio per utterance: 1 rows, 2 audios'):
        joint_ctc_decode(model, two, 4, [EOS_ID], model.cfg.vocab_size, 0.5,
                         token_spelling(ByteTokenizer(), model.cfg.vocab_size, 'cpu'))
