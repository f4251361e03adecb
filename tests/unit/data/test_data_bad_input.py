"""Bad input: each kind is skipped with a counted warning naming file and reason, or stops the job
under strict_data; failures found only at decode time never change batch sizes or end an epoch."""

import logging
import os

import pytest
import torch

from megatron_salm_mtp.config_checks import ConfigError
from megatron_salm_mtp.data.audio import write_wav
from megatron_salm_mtp.data.dataset import BadSampleError
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader, build_dataset
from megatron_salm_mtp.data.manifest import ManifestError
from tests.support.data_fixtures import make_corpus, tone, write_manifest

GOOD = 16  # good utterances in the corpus
EXPECTED = {'missing_file': 1, 'unreadable_audio': 2, 'empty_audio': 2, 'empty_transcript': 2,
            'audio_too_long': 1, 'sequence_too_long': 1}


@pytest.fixture
def bad_manifest(tmp_path):
    """16 good lines with the bad ones interleaved (never two bad lines in a row)."""
    make_corpus(tmp_path, n=GOOD, seconds=(1.0, 1.5))
    d = str(tmp_path)
    write_wav(os.path.join(d, 'empty.wav'), tone(0.0))
    write_wav(os.path.join(d, 'tiny.wav'), tone(0.005))  # 80 samples: not one mel frame
    write_wav(os.path.join(d, 'long.wav'), tone(6.0))
    open(os.path.join(d, 'garbage.wav'), 'wb').write(b'this is not a wav file at all')
    write_wav(os.path.join(d, 'trunc.wav'), tone(1.0))
    with open(os.path.join(d, 'trunc.wav'), 'r+b') as f:
        f.truncate(5000)
    bad = [
        {'audio_filepath': 'nope.wav', 'duration': 1.0, 'text': 'missing'},
        {'audio_filepath': 'garbage.wav', 'duration': 1.0, 'text': 'garbage'},
        {'audio_filepath': 'trunc.wav', 'duration': 1.0, 'text': 'truncated'},
        {'audio_filepath': 'empty.wav', 'duration': 0.0, 'text': 'zero length'},
        {'audio_filepath': 'tiny.wav', 'duration': 0.005, 'text': 'too short for a frame'},
        {'audio_filepath': 'wav/000.wav', 'duration': 1.0, 'text': ''},
        {'audio_filepath': 'wav/001.wav', 'duration': 1.0, 'text': '   '},
        {'audio_filepath': 'long.wav', 'duration': 6.0, 'text': 'too long'},
        {'audio_filepath': 'wav/002.wav', 'duration': 1.0, 'text': 'word ' * 40},
    ]
    good = [{'audio_filepath': f'wav/{i:03d}.wav', 'duration': 1.0, 'text': f'utterance {i}'} for i in range(GOOD)]
    rows = []
    for i, g in enumerate(good):
        rows.append(g)
        if i < len(bad):
            rows.append(bad[i])
    return write_manifest(tmp_path / 'bad.jsonl', rows)


def cfg(**kw):
    # one utterance per row: a bad one is substituted (packed rows: tests/unit/data/test_data_packing.py)
    base = dict(seq_length=80, micro_batch_size=2, global_batch_size=8, max_duration=5.0, default_prompt=None,
                pack_sequences=False)
    base.update(kw)
    return DataConfig(**base)


def test_prescan_skips_each_kind_with_a_named_warning(bad_manifest, caplog):
    with caplog.at_level(logging.WARNING, logger='megatron_salm_mtp.data'):
        ds = build_dataset(cfg(), bad_manifest)
    assert len(ds) == GOOD and ds.skip_counts() == EXPECTED
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == sum(EXPECTED.values())
    for name, reason in [('nope.wav', 'missing_file'), ('garbage.wav', 'unreadable_audio'),
                         ('trunc.wav', 'unreadable_audio'), ('empty.wav', 'empty_audio'), ('tiny.wav', 'empty_audio'),
                         ('long.wav', 'audio_too_long'), ('wav/002.wav', 'sequence_too_long')]:
        assert any(name in m and reason in m and 'bad.jsonl:' in m for m in msgs), (name, reason)
    assert sum('empty_transcript' in m for m in msgs) == 2


def test_epoch_reports_counts_and_batches_stay_full(bad_manifest, caplog):
    loader = build_dataloader(cfg(), bad_manifest)
    with caplog.at_level(logging.WARNING, logger='megatron_salm_mtp.data'):
        batches = list(loader)
    assert len(batches) == 8 and all(b['tokens'].shape == (2, 80) for b in batches)
    assert loader.epoch_skip_counts == {0: EXPECTED}
    assert any('epoch 0: skipped samples by reason' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('prescan', [True, False])
def test_strict_data_stops_at_the_first_bad_sample(bad_manifest, prescan):
    with pytest.raises(BadSampleError, match=r'nope\.wav \(.*bad\.jsonl:2\): missing_file'):
        loader = build_dataloader(cfg(strict_data=True, prescan=prescan, seed=0), bad_manifest, shuffle=False)
        list(loader)


def test_decode_time_failures_are_substituted_across_workers(tmp_path):
    """Files broken after the prescan: the epoch completes with full batches; skips are counted once."""
    manifest = make_corpus(tmp_path, n=16, seconds=(1.0, 1.5))
    loader = build_dataloader(cfg(num_workers=2), manifest)
    os.remove(tmp_path / 'wav' / '003.wav')
    with open(tmp_path / 'wav' / '009.wav', 'r+b') as f:
        f.truncate(3000)
    for epoch in range(2):
        batches = list(loader)
        assert len(batches) == 8 and all(b['tokens'].shape == (2, 80) for b in batches)
        n_audio = sum(b['audio_features'].shape[0] for b in batches)
        assert n_audio == 16  # every slot filled: bad indices replaced by their next good neighbour
        assert loader.epoch_skip_counts[epoch] == {'missing_file': 1, 'unreadable_audio': 1}


def test_without_prescan_everything_is_caught_lazily(bad_manifest):
    """No header is read at start; an epoch over all 25 lines substitutes each bad one once."""
    loader = build_dataloader(cfg(prescan=False, global_batch_size=5, micro_batch_size=5), bad_manifest)
    batches = list(loader)
    assert len(batches) == 5 and all(b['tokens'].shape == (5, 80) for b in batches)
    assert loader.epoch_skip_counts[0] == EXPECTED


def test_strict_at_decode_time_raises_through_workers(tmp_path):
    manifest = make_corpus(tmp_path, n=8)
    loader = build_dataloader(cfg(num_workers=2, strict_data=True, global_batch_size=4), manifest)
    os.remove(tmp_path / 'wav' / '005.wav')
    with pytest.raises(BadSampleError, match='005.wav.*missing_file'):
        list(loader)


def test_malformed_manifest_line_is_an_error_before_training(bad_manifest):
    with open(bad_manifest, 'a') as f:
        f.write('{"audio_filepath": "x.wav", "text": \n')
    n_lines = sum(1 for _ in open(bad_manifest))
    with pytest.raises(ManifestError, match=rf'bad\.jsonl:{n_lines}: invalid JSON'):
        build_dataloader(cfg(), bad_manifest)


def test_nothing_usable_is_an_error(tmp_path):
    m = write_manifest(tmp_path / 'm.jsonl', [{'audio_filepath': 'a.wav', 'duration': 1, 'text': 'x'}])
    with pytest.raises(ConfigError, match=r'm\.jsonl: no usable sample among 1 examples'):
        build_dataset(cfg(), m)
    assert torch.__version__  # torch imported for the DataLoader path above


def test_all_files_gone_is_a_clear_error_not_a_hang(tmp_path):
    manifest = make_corpus(tmp_path, n=4)
    ds = build_dataset(cfg(), manifest)
    for name in os.listdir(tmp_path / 'wav'):
        os.remove(tmp_path / 'wav' / name)
    with pytest.raises(RuntimeError, match='4 consecutive samples from index 2 failed.*missing_file'):
        ds[2]
    assert ds.skip_counts() == {'missing_file': 4}


def test_a_text_only_line_is_named_by_its_manifest_line(tmp_path, caplog):
    """Text-only conversations (the recogniser's text stage) have no audio path to name: a skip
    names the manifest and line alone."""
    def line(text):
        return {'conversations': [{'from': 'User', 'type': 'text', 'value': 'Write a sentence.'},
                                  {'from': 'Assistant', 'type': 'text', 'value': text}]}
    manifest = write_manifest(tmp_path / 'text.jsonl', [line(f'sentence {i}') for i in range(8)] + [line('word ' * 40)])
    with caplog.at_level(logging.WARNING, logger='megatron_salm_mtp.data'):
        ds = build_dataset(cfg(), manifest)
    assert len(ds) == 8 and ds.skip_counts() == {'sequence_too_long': 1}
    assert [r.getMessage().split(': sequence_too_long')[0] for r in caplog.records] == [
        f'skipping {manifest}:9']


def test_too_few_usable_utterances_for_a_global_batch_name_the_manifest_and_the_skips(bad_manifest):
    """A configuration error (one line from the entry point), not the sampler's traceback."""
    skipped = sum(EXPECTED.values())
    with pytest.raises(ConfigError, match=rf'bad\.jsonl: {GOOD} usable utterances \({skipped} skipped: '
                                          r'missing_file 1, .*\) cannot fill one global batch of 32 '
                                          r'\(--global-batch-size\)'):
        build_dataloader(cfg(global_batch_size=32), bad_manifest)
