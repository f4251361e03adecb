"""Manifest lines -> decoding inputs (inference/inputs.py): splits, skipped audio, silenced audio;
progress lines (data/progress.py)."""

import io

import numpy as np
import pytest
import torch

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.data.audio import write_wav
from megatron_salm_mtp.data.features import log_mel
from megatron_salm_mtp.data.loader import DataConfig
from megatron_salm_mtp.data.progress import Progress
from megatron_salm_mtp.inference.inputs import make_batch, read_utterances, split_name
from megatron_salm_mtp.inference.loading import inference_data_config
from tests.support.data_fixtures import tone, write_manifest


@pytest.fixture
def data():
    config = DataConfig(max_duration=2.0)
    return config, config.make_tokenizer()


def _corpus(folder, rows):
    for name, seconds in (('a.wav', 0.7), ('b.wav', 1.1), ('long.wav', 2.5)):
        write_wav(str(folder / name), tone(seconds, seed=len(name)), 16000)
    write_wav(str(folder / 'empty.wav'), np.zeros(100, dtype=np.float32), 16000)  # under one mel frame
    (folder / 'bad.wav').write_bytes(b'RIFF\x00\x00')
    return write_manifest(folder / 'test_unseen.jsonl', rows)


def test_bad_audio_is_skipped_and_counted(tmp_path, data, caplog):
    manifest = _corpus(tmp_path, [
        {'audio_filepath': 'a.wav', 'text': 'one', 'subset': 'digits'},
        {'audio_filepath': 'gone.wav', 'text': 'two'},
        {'audio_filepath': 'bad.wav', 'text': 'three'},
        {'audio_filepath': 'empty.wav', 'text': 'four'},
        {'audio_filepath': 'long.wav', 'text': 'five'},
        {'audio_filepath': 'b.wav', 'text': 'six'}])
    utterances, skips = read_utterances(manifest, *data)
    assert [(u.line, u.split, u.subset, u.reference) for u in utterances] == \
        [(1, 'test_unseen', 'digits', 'one'), (6, 'test_unseen', 'all', 'six')]
    assert [s.reason for s in skips] == ['missing_file', 'unreadable_audio', 'empty_audio', 'audio_too_long']
    assert skips[0].where == f'{tmp_path / "gone.wav"} ({manifest}:2)'
    assert 'skipping' in caplog.text and 'gone.wav' in caplog.text
    assert utterances[0].seconds == pytest.approx(0.7)
    limited, skipped = read_utterances(manifest, *data, limit=2)
    assert len(limited) == 1 and len(skipped) == 1


def test_no_usable_utterance_names_the_manifest(tmp_path, data):
    manifest = _corpus(tmp_path, [{'audio_filepath': 'gone.wav', 'text': 'x'}])
    with pytest.raises(ValueError, match=f'--manifest {manifest}: no usable utterance among 1 lines '
                                         r'\(1 skipped: missing_file\)'):
        read_utterances(manifest, *data)


def test_silence_keeps_the_prompt_and_is_the_log_mel_of_zeros(tmp_path, data):
    manifest = _corpus(tmp_path, [{'audio_filepath': 'b.wav', 'text': 'six'}])
    [utt], _ = read_utterances(manifest, *data)
    silent = utt.silenced()
    assert silent.prompt_ids == utt.prompt_ids and silent.reference == utt.reference
    assert silent.features[0].shape == utt.features[0].shape
    # digital silence: every bin at the log floor (log10(1e-10) + 4) / 4, not zero features
    assert torch.equal(silent.features[0], torch.full_like(utt.features[0], -1.5))
    assert torch.equal(silent.features[0], log_mel(np.zeros(len(tone(1.1))), 80)[:, :utt.features[0].shape[1]])
    config, tokenizer = data
    sound, quiet = (make_batch([u], tokenizer.pad_id, 80, 'cpu') for u in (utt, silent))
    assert torch.equal(sound.tokens, quiet.tokens) and torch.equal(sound.lengths, quiet.lengths)
    assert torch.equal(sound.audio_feature_lengths, quiet.audio_feature_lengths)


def test_split_name_is_the_file_stem():
    assert split_name('corpus/test_unseen.jsonl') == 'test_unseen' and split_name('valid.json') == 'valid'


def test_progress_reports_rate_and_end():
    out = io.StringIO()
    progress = Progress('greedy', 5, interval=0.0, stream=out)
    for _ in range(5):
        progress.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith('greedy: 1/5 utterances (20%), ') and 'ETA 0:' in lines[0]
    assert lines[-1].startswith('greedy: 5/5 utterances (100%), ') and 'done in 0:00:0' in lines[-1]
    quiet = io.StringIO()
    progress = Progress('x', 3, interval=3600.0, stream=quiet)
    for _ in range(3):
        progress.advance()
    assert len(quiet.getvalue().splitlines()) == 1  # only the end within the interval


def test_a_checkpoint_saved_before_packing_decodes_one_utterance_per_row():
    """config.yaml of a run that padded rows to their longest and bucketed them (no pack_sequences
    key: saved before packing was the default); packing's checks would refuse those settings."""
    stored = {'seq_length': 416, 'pad_to_seq_length': False, 'bucket_window': 16, 'micro_batch_size': 128,
              'global_batch_size': 128, 'n_mels': 80, 'tokenizer_type': 'byte'}
    with pytest.raises(ValueError, match='add --no-pack-sequences'):
        DataConfig(**stored)
    data = inference_data_config(stored, 'ckpt')
    assert not data.pack_sequences and (data.pad_to_seq_length, data.bucket_window) == (False, 16)


def test_an_import_decodes_with_the_features_of_its_model():
    """An import-hf checkpoint records model fields only: the data settings the model owns come
    from them, not from DataConfig's defaults (80 bins, stack 4)."""
    stored = {'num_mel_bins': 128, 'audio_frame_stack': 2, 'seq_length': 512, 'ctc_target_units': 'characters'}
    data = inference_data_config(stored, 'ckpt')
    assert (data.n_mels, data.stack, data.seq_length, data.ctc_target_units) == (128, 2, 512, 'characters')
    assert (inference_data_config({}, 'ckpt').n_mels, inference_data_config({}, 'ckpt').stack) == (80, 4)


@pytest.mark.parametrize('data_field, stored_value, model_field, model_value',
                         [('n_mels', 80, 'num_mel_bins', 128), ('stack', 4, 'audio_frame_stack', 2)])
def test_data_settings_that_contradict_the_model_name_the_field_and_checkpoint(data_field, stored_value,
                                                                               model_field, model_value):
    stored = {'num_mel_bins': 128, 'n_mels': 128, 'audio_frame_stack': 2, 'stack': 2}
    inference_data_config(stored, 'ckpt')  # agreeing values load
    stored[data_field] = stored_value
    expected = rf'^--load run \(iteration 7\): config.yaml records {data_field} {stored_value} for the data ' \
               rf'but {model_field} {model_value} for the model'
    with pytest.raises(ConfigError, match=expected):
        inference_data_config(stored, '--load run (iteration 7)')
