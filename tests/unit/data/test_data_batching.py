"""The microbatch contract with the model, checked field by field against independent computations."""

import wave

import pytest
import torch

from megatron_salm_mtp.data.audio import load_audio, write_wav
from megatron_salm_mtp.data.batching import BATCH_KEYS, Collator
from megatron_salm_mtp.data.dataset import SpeechDataset
from megatron_salm_mtp.data.features import AudioPadding, log_mel
from megatron_salm_mtp.data.frames import audio_tokens, mel_frames
from megatron_salm_mtp.data.manifest import read_manifest
from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from tests.support.data_fixtures import make_corpus, tone, write_manifest

TOK = ByteTokenizer()


def runs(row, token):
    """(start, length) of each run of ``token`` in a 1-D tensor."""
    out, start = [], None
    for j, t in enumerate(row.tolist() + [None]):
        if t == token and start is None:
            start = j
        elif t != token and start is not None:
            out.append((start, j - start))
            start = None
    return out


def wav_frames(path):
    with wave.open(path) as w:
        return w.getnframes()


@pytest.fixture
def mixed_manifest(tmp_path):
    """Two ASR lines (one 44.1 kHz stereo) and a conversation with two audios."""
    make_corpus(tmp_path, n=2)
    write_wav(str(tmp_path / 'st.wav'), tone(1.3, 44100, channels=2), 44100, bits=24)
    return write_manifest(tmp_path / 'mix.jsonl', [
        {'audio_filepath': 'wav/000.wav', 'duration': 1.0, 'text': 'first answer'},
        {'conversations': [
            {'from': 'User', 'type': 'audio', 'value': 'wav/001.wav', 'duration': 2.5},
            {'from': 'User', 'type': 'text', 'value': 'and'},
            {'from': 'User', 'type': 'audio', 'value': 'st.wav', 'duration': 1.3},
            {'from': 'Assistant', 'type': 'text', 'value': 'two clips'}]},
        {'audio_filepath': 'st.wav', 'duration': 1.3, 'text': 'stereo'},
    ])


@pytest.mark.parametrize('stack,n_mels', [(4, 80), (2, 128)])
def test_contract(mixed_manifest, stack, n_mels):
    examples = read_manifest(mixed_manifest)
    ds = SpeechDataset(examples, TOK, seq_length=160, stack=stack, n_mels=n_mels)
    batch = Collator(TOK.pad_id, 160, n_mels)([ds[i] for i in range(3)])
    assert tuple(batch) == BATCH_KEYS
    b, s = 3, 160
    for k in ('tokens', 'labels', 'position_ids'):
        assert batch[k].dtype == torch.long and batch[k].shape == (b, s)
    assert batch['loss_mask'].dtype == torch.float32 and batch['loss_mask'].shape == (b, s)
    assert torch.equal(batch['position_ids'], torch.arange(s).expand(b, s))

    # audios in row-major order of their placeholder runs, each run sized by the frame contract
    files = [a.value for ex in examples for a in ex.audios]
    n_samples = [wav_frames(f) if 'st.wav' not in f else 1.3 * 16000 for f in files]
    lengths = batch['audio_feature_lengths']
    assert lengths.dtype == torch.long and lengths.tolist() == [mel_frames(int(n)) for n in n_samples]
    run_lengths = [n for i in range(b) for _, n in runs(batch['tokens'][i], TOK.audio_token_id)]
    assert run_lengths == [audio_tokens(int(t), stack) for t in lengths]
    feats = batch['audio_features']
    assert feats.dtype == torch.float32 and feats.shape == (4, n_mels, int(lengths.max()))
    for k, f in enumerate(files):
        ref = log_mel(load_audio(f), n_mels)
        assert torch.equal(feats[k, :, : lengths[k]], ref) and (feats[k, :, lengths[k]:] == 0).all()

    # labels are tokens shifted left; loss mask covers exactly answer + EOS
    assert torch.equal(batch['labels'][:, :-1], batch['tokens'][:, 1:])
    answers = ['first answer', 'two clips', 'stereo']
    for i in range(b):
        sup = batch['labels'][i][batch['loss_mask'][i] == 1].tolist()
        assert sup == list(answers[i].encode()) + [TOK.eos_id]
        n = len(ds[i]['ids'])
        assert (batch['tokens'][i, n:] == TOK.pad_id).all() and (batch['labels'][i, n - 1:] == TOK.pad_id).all()
        assert batch['tokens'][i, 0] == TOK.bos_id


def test_sequence_of_exactly_seq_length_plus_one_fits(tmp_path):
    m = make_corpus(tmp_path, n=1, seconds=(1.0, 1.0))
    (ex,) = read_manifest(m, default_prompt=None)
    n_ids = len(SpeechDataset([ex], TOK, seq_length=512)[0]['ids'])
    ds = SpeechDataset([ex], TOK, seq_length=n_ids - 1)
    batch = Collator(TOK.pad_id, n_ids - 1)([ds[0]])
    assert batch['labels'][0, -1] == TOK.eos_id and batch['loss_mask'][0, -1] == 1.0
    assert ds.skip_counts() == {}


def test_dynamic_length_pads_to_multiple(tiny_corpus):
    ds = SpeechDataset(read_manifest(tiny_corpus), TOK, seq_length=400)
    samples = [ds[0], ds[5]]
    longest = max(len(x['ids']) for x in samples) - 1
    batch = Collator(TOK.pad_id, 400, pad_to_seq_length=False, pad_to_multiple=8)(samples)
    assert batch['tokens'].shape[1] == -(-longest // 8) * 8 < 400
    fixed = Collator(TOK.pad_id, 400)(samples)
    s = batch['tokens'].shape[1]
    for k in ('tokens', 'labels', 'loss_mask'):
        assert torch.equal(batch[k], fixed[k][:, :s])
    # nothing supervised is cut: beyond s the fixed batch holds only padding (and at most a final EOS input)
    assert (fixed['loss_mask'][:, s:] == 0).all() and (fixed['labels'][:, s:] == TOK.pad_id).all()
    assert (fixed['tokens'][:, s + 1:] == TOK.pad_id).all()


def test_text_only_batch_has_empty_audio_tensors():
    from megatron_salm_mtp.data.manifest import Example, Segment

    ex = Example((Segment('user', 'text', 'hi'), Segment('assistant', 'text', 'yo')), 'm', 1)
    ds = SpeechDataset([ex], TOK, seq_length=32)
    batch = Collator(TOK.pad_id, 32, 80)([ds[0]])
    assert batch['audio_features'].shape == (0, 80, 0) and batch['audio_feature_lengths'].shape == (0,)


def test_audio_padding_rounds_up_within_the_longest_admitted():
    assert AudioPadding().frames(101) == 101
    assert AudioPadding(64).frames(101) == 128 and AudioPadding(64).frames(128) == 128
    assert AudioPadding(64, limit=120).frames(101) == 120  # never past the longest audio the data admits
    assert AudioPadding(64, limit=120).frames(125) == 125  # ... nor below the batch's own longest


def test_collated_audio_is_padded_to_the_multiple(mixed_manifest):
    ds = SpeechDataset(read_manifest(mixed_manifest), TOK, seq_length=160)
    samples = [ds[i] for i in range(3)]
    exact = Collator(TOK.pad_id, 160)(samples)
    padded = Collator(TOK.pad_id, 160, audio_padding=AudioPadding(64))(samples)
    longest = int(exact['audio_feature_lengths'].max())
    assert exact['audio_features'].shape[-1] == longest
    assert padded['audio_features'].shape[-1] == -(-longest // 64) * 64 > longest
    assert torch.equal(padded['audio_features'][..., :longest], exact['audio_features'])
    assert not padded['audio_features'][..., longest:].any()
    for key in BATCH_KEYS:
        if key != 'audio_features':
            assert torch.equal(padded[key], exact[key])
