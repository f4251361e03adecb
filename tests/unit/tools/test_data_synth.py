"""Synthetic corpus with espeak-ng: layout, reproducibility, held-out splits, missing voices, bad
text sources, and the pipeline consuming it."""

import hashlib
import json
import logging
import os

import numpy as np
import pytest

from megatron_salm_mtp.data.audio import audio_info
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
from megatron_salm_mtp.data.manifest import read_manifest
from megatron_salm_mtp.tools.corpus import accents, synth, synth_text
from megatron_salm_mtp.tools.corpus.espeak import SynthesisError, espeak_available, find_backend
from megatron_salm_mtp.tools.corpus.synth import CorpusPlan, SynthSettings, build_corpus, main, make_utterance
from megatron_salm_mtp.tools.corpus.text_source import default_text_source, load_text_source, save_pools
from megatron_salm_mtp.tools.corpus.voices import HELD_OUT_BASES, HELD_OUT_VARIANTS, corpus_voices

needs_espeak = pytest.mark.skipif(not espeak_available() or default_text_source() is None,
                                  reason='espeak-ng or WordNet unavailable')
SPLITS = ('train', 'valid', 'test', 'test_unseen')


def rows_of(folder, split):
    return [json.loads(line) for line in open(os.path.join(folder, f'{split}.jsonl'))]


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(folder, 'audio'))):
        h.update(open(os.path.join(folder, 'audio', name), 'rb').read())
    for split in SPLITS:
        h.update(open(os.path.join(folder, f'{split}.jsonl'), 'rb').read())
    return h.hexdigest()


@needs_espeak
def test_corpus_layout_and_manifests(espeak_corpus):
    summary = json.load(open(os.path.join(espeak_corpus, 'corpus.json')))
    assert summary['version'] == 2 and summary['splits'] == {'train': 28, 'valid': 4, 'test': 4, 'test_unseen': 4}
    rows = [r for s in SPLITS for r in rows_of(espeak_corpus, s)]
    assert {r['subset'] for r in rows} == set(synth_text.SUBSETS)
    for r in rows:
        info = audio_info(os.path.join(espeak_corpus, r['audio_filepath']))
        assert info.sample_rate == 16000 and info.channels == 1
        assert 1.0 <= info.duration <= 3.0 and abs(info.duration - r['duration']) < 1e-3
        assert r['text'] and not os.path.isabs(r['audio_filepath'])
        assert r['accent'] == r['voice'].partition('+')[0]  # evaluate --group-by accent
    for split in SPLITS:
        split_rows = rows_of(espeak_corpus, split)
        words = {w.lower() for r in split_rows for w in r['text'].split()}
        assert summary['per_split'][split]['voices'] == sorted({r['voice'] for r in split_rows})
        assert summary['per_split'][split]['distinct_words'] == len(words)
    assert len(read_manifest(os.path.join(espeak_corpus, 'valid.jsonl'))) == 4


@needs_espeak
def test_test_unseen_shares_no_voice_text_or_held_out_word_with_train(espeak_corpus):
    train, unseen = rows_of(espeak_corpus, 'train'), rows_of(espeak_corpus, 'test_unseen')
    assert not {r['voice'] for r in train} & {r['voice'] for r in unseen}
    assert all(r['voice'].split('+')[0] in HELD_OUT_BASES or r['voice'].partition('+')[2] in HELD_OUT_VARIANTS
               for r in unseen)
    assert not {r['text'] for r in train} & {r['text'] for r in unseen}
    train_words = {w.lower() for r in train for w in r['text'].split()}
    held = synth_text.split_texts(load_text_source())['test_unseen']  # test_unseen's own words and names
    assert not train_words & ({w.lower() for w in held.first_names + held.surnames} | set(held.words))
    assert len(train_words) > 100  # a check with substance: 28 utterances of varied words


@needs_espeak
def test_same_seed_same_bytes_prefix_property(tmp_path, espeak_corpus):
    build_corpus(str(tmp_path / 'a'), 40, seed=3, max_seconds=3.0)
    assert digest(str(tmp_path / 'a')) == digest(espeak_corpus)
    # a smaller corpus is a prefix of the larger one, also when its text comes from the compact pools file
    save_pools(load_text_source(), str(tmp_path / 'pools.json.gz'))
    build_corpus(str(tmp_path / 'b'), 10, seed=3, max_seconds=3.0, text_source=str(tmp_path / 'pools.json.gz'))
    for name in os.listdir(tmp_path / 'b' / 'audio'):
        smaller = open(tmp_path / 'b' / 'audio' / name, 'rb').read()
        assert smaller == open(os.path.join(espeak_corpus, 'audio', name), 'rb').read()
    build_corpus(str(tmp_path / 'c'), 10, seed=4, max_seconds=3.0)
    assert open(tmp_path / 'c' / 'train.jsonl').read() != open(tmp_path / 'b' / 'train.jsonl').read()


@needs_espeak
@pytest.mark.parametrize('jobs', [1, 2])  # in this process, and in threads
def test_progress_lines_on_stderr(tmp_path, monkeypatch, capsys, jobs):
    monkeypatch.setattr(synth, 'PROGRESS_SECONDS', 0.0)
    build_corpus(str(tmp_path), 4, seed=3, max_seconds=3.0, jobs=jobs)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(',')[0] for line in lines] == [f'synth: {n}/4 utterances ({25 * n}%)' for n in range(1, 5)]
    assert 'utterances/s, ETA 0:' in lines[0] and 'done in 0:' in lines[-1]


@needs_espeak
def test_a_missing_variant_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    """espeak-ng would silently speak the plain base voice for an unknown variant: the corpus names
    the missing one, records it, and never uses it."""
    data = find_backend('cli').data_dir
    copy = tmp_path / 'share' / 'espeak-ng-data'
    os.makedirs(copy / 'voices' / '!v')
    for entry in os.listdir(data):
        if entry != 'voices':
            os.symlink(os.path.join(data, entry), copy / entry)
    for entry in os.listdir(os.path.join(data, 'voices')):
        if entry != '!v':
            os.symlink(os.path.join(data, 'voices', entry), copy / 'voices' / entry)
    for variant in os.listdir(os.path.join(data, 'voices', '!v')):
        if variant != 'm3':
            os.symlink(os.path.join(data, 'voices', '!v', variant), copy / 'voices' / '!v' / variant)
    monkeypatch.setenv('ESPEAK_DATA_PATH', str(tmp_path / 'share'))
    with caplog.at_level(logging.WARNING):
        summary = build_corpus(str(tmp_path / 'c'), 12, seed=5, max_seconds=3.0)
    assert f'espeak-ng voice +m3 is missing in {copy}' in caplog.text
    assert summary['voice_pool']['missing'] == ['+m3']
    assert not any(v.endswith('+m3') for v in summary['voice_pool']['seen'] + summary['voice_pool']['unseen'])


class _CrashesOnce:
    """The binary backend, except that its first synthesis fails as espeak-ng's segfault did."""

    def __init__(self, engine):
        self.engine, self.calls, self.data_dir = engine, [], engine.data_dir

    def synth(self, text, voice, prosody):
        self.calls.append(text)
        if len(self.calls) == 1:
            raise SynthesisError(f'espeak-ng failed (-11) for voice {voice!r}: ')
        return self.engine.synth(text, voice, prosody)

    def phonemes(self, text, voice):
        return self.engine.phonemes(text, voice)


@needs_espeak
def test_an_espeak_crash_draws_another_text_with_a_warning(caplog):
    engine = _CrashesOnce(find_backend('cli'))
    texts = synth_text.split_texts(load_text_source(None))
    plan = CorpusPlan(SynthSettings(max_seconds=4.0), texts, corpus_voices(engine.data_dir)[0])
    with caplog.at_level(logging.WARNING):
        audio, fields = make_utterance(engine, plan, 3)
    assert 'utterance 3: espeak-ng failed (-11)' in caplog.text and 'drawing another text' in caplog.text
    assert len(engine.calls) >= 2 and audio.size > 0 and fields['text']


@pytest.mark.parametrize('flags, message', [
    (['--text-source', '{tmp}/missing.gz'], 'text source {tmp}/missing.gz: no such file or folder'),
    (['--min-seconds', '3', '--max-seconds', '4'], '--min-seconds 3.0 must be positive and --max-seconds 4.0 at least'),
    (['--noise-prob', '1.5'], '--noise-prob must be in [0, 1], got 1.5'),
    (['--rt60', '0.9', '0.2'], '--rt60 MIN MAX must be positive and ordered'),
    (['--subsets', 'digits,poems'], '--subsets must name some of natural,wordlist,digits,names, got digits,poems'),
    (['--subsets', ','], '--subsets must name some of natural,wordlist,digits,names, got none'),
    (['--synthetic-accents', '100'], '--synthetic-accents must be in [0, 99], got 100'),
])
def test_bad_settings_are_one_line_errors_naming_them(tmp_path, capsys, flags, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert main(['--out', str(tmp_path / 'c'), '--num-utterances', '4'] + flags) == 2
    err = capsys.readouterr().err
    prefix = 'python -m megatron_salm_mtp.tools.corpus.synth: error: '
    assert err.count('\n') == 1 and err.startswith(prefix + message.format(tmp=tmp_path))
    assert not os.path.exists(tmp_path / 'c')


@needs_espeak
def test_subsets_restrict_the_texts_and_keep_the_splits(tmp_path):
    """A digits-only corpus (the CPU twin's): every utterance a digit string, the same splits and voices."""
    assert main(['--out', str(tmp_path), '--num-utterances', '20', '--seed', '3', '--max-seconds', '3',
                 '--subsets', 'digits']) == 0
    summary = json.load(open(tmp_path / 'corpus.json'))
    assert summary['subsets'] == {'natural': 0, 'wordlist': 0, 'digits': 20, 'names': 0}
    assert summary['text_subsets'] == ['digits']
    rows = {s: rows_of(str(tmp_path), s) for s in SPLITS}
    assert {len(r) for r in rows.values()} == {14, 2} and all(r['text'][-1].isdigit() for r in rows['train'])
    assert all(r['voice'].split('+')[0] in HELD_OUT_BASES or r['voice'].partition('+')[2] in HELD_OUT_VARIANTS
               for r in rows['test_unseen'])
    assert not {r['text'] for r in rows['train']} & {r['text'] for r in rows['test_unseen']}


@needs_espeak
def test_pipeline_consumes_the_corpus(espeak_corpus):
    cfg = DataConfig(seq_length=256, micro_batch_size=4, global_batch_size=8, max_duration=4.0)
    loader = build_dataloader(cfg, os.path.join(espeak_corpus, 'train.jsonl'))
    batches = list(loader)  # packed rows (the default): whole global batches of 8 rows
    assert len(batches) == len(loader.dataset) // 8 * 2 >= 2 and loader.skip_counts() == {}
    assert all(b['loss_mask'].sum() > 0 and b['tokens'].shape == (4, 256) for b in batches)
    assert sum(b['audio_features'].shape[0] for b in batches) > 4 * len(batches)  # utterances share rows


def test_library_backend_when_installed(tmp_path):
    pytest.importorskip('espeakng_loader')
    if default_text_source() is None:
        pytest.skip('WordNet absent')
    s = build_corpus(str(tmp_path), 6, seed=1, backend='lib', max_seconds=6.0)
    assert s['backend'] == 'espeakng-loader library' and sum(s['splits'].values()) == 6
    assert s['audio_reproducible'] is False  # the library's waveforms vary from run to run
    rows = read_manifest(str(tmp_path / 'train.jsonl'))
    assert all(1.0 <= audio_info(r.audios[0].value).duration <= 6.0 for r in rows)
    build_corpus(str(tmp_path / 'again'), 6, seed=1, backend='lib', max_seconds=6.0)
    first, again = ([json.loads(line)['text'] for line in open(folder / 'train.jsonl')]
                    for folder in (tmp_path, tmp_path / 'again'))
    assert first == again


@needs_espeak
def test_synthetic_accents_speak_in_train_only_and_leave_the_other_splits_unchanged(tmp_path, espeak_corpus):
    """The fixture is the same corpus without accents: only train utterances may differ, and the
    accents recombine the training accents' parts, never the held-out ones'."""
    summary = build_corpus(str(tmp_path), 40, seed=3, max_seconds=3.0, synthetic_accents=4)
    files = summary['synthetic_accent_files']
    assert sorted(files) == ['acc/00', 'acc/01', 'acc/02', 'acc/03'] and len(set(files.values())) == 4
    for name, text in files.items():
        assert open(tmp_path / accents.OVERLAY / 'espeak-ng-data' / 'voices' / name).read() == text
        assert text.startswith('name synthetic English accent') and 'phonemes en-wm' not in text
        assert 'phonemes en-us-nyc' not in text and 'replace 00 h NULL' not in text  # held-out accents' own
    train = rows_of(str(tmp_path), 'train')
    assert any(r['voice'].startswith('acc/') for r in train) and all(r['phonemes'] for r in train)
    assert [r['voice'] for r in train] != [r['voice'] for r in rows_of(espeak_corpus, 'train')]
    for split in ('valid', 'test', 'test_unseen'):
        rows = rows_of(str(tmp_path), split)
        assert rows == rows_of(espeak_corpus, split) and not any('acc/' in r['voice'] for r in rows)
        for r in rows:
            audio = r['audio_filepath']
            assert open(tmp_path / audio, 'rb').read() == open(os.path.join(espeak_corpus, audio), 'rb').read()


@needs_espeak
def test_an_accent_espeak_cannot_speak_stops_the_corpus_naming_it(tmp_path, monkeypatch, capsys):
    real = find_backend('cli')

    class Mute:
        data_dir, thread_safe = real.data_dir, True

        def synth(self, text, voice, prosody=None):
            return np.zeros(100, np.float32), 22050

        def phonemes(self, text, voice):
            return 'ðə kwˈɪk'  # transcribes, but speaks nothing

    monkeypatch.setattr(accents, 'find_backend', lambda backend, path: Mute())
    assert main(['--out', str(tmp_path), '--num-utterances', '4', '--synthetic-accents', '2']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert f"{tmp_path / accents.OVERLAY / 'espeak-ng-data' / 'voices' / 'acc' / '00'} speaks 0.00 s" in err
