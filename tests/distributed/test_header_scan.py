"""The prescan's audio headers (data/header_scan.py): split between the ranks, read once, cached
beside the manifest keyed by its content; the dataset is the same as when every rank read all."""

import errno
import json
import logging
import os
import subprocess
import sys

import pytest

from megatron_salm_mtp.data import header_scan
from megatron_salm_mtp.data.loader import DataConfig, build_dataset
from tests.support.data_fixtures import make_corpus, write_manifest
from tests.support.process import child_env, free_port, support_script

CFG = DataConfig(seq_length=128, micro_batch_size=2, global_batch_size=4, max_duration=5.0)


@pytest.fixture
def corpus(tmp_path):
    """12 good utterances and one line whose audio is missing."""
    manifest = make_corpus(tmp_path, n=12, seconds=(1.0, 2.0))
    with open(manifest, 'a') as f:
        f.write(json.dumps({'audio_filepath': 'wav/missing.wav', 'duration': 1.0, 'text': 'gone'}) + '\n')
    return manifest


def _counting(monkeypatch):
    """The names of the audio files whose header is opened from now on."""
    reads, real = [], header_scan.audio_info
    monkeypatch.setattr(header_scan, 'audio_info', lambda path: reads.append(os.path.basename(path)) or real(path))
    return reads


def _cached_paths(manifest):
    with open(header_scan.cache_path(manifest)) as f:
        return sorted(os.path.basename(p) for p in json.load(f)['headers'])


def test_a_cache_hit_opens_no_audio(tmp_path, monkeypatch):
    manifest = make_corpus(tmp_path, n=6)
    reads = _counting(monkeypatch)
    first = build_dataset(CFG, [manifest])
    assert len(reads) == 6 and _cached_paths(manifest) == sorted(reads)
    assert os.stat(header_scan.cache_path(manifest)).st_mode & 0o777 == 0o644  # readable by the corpus's users
    reads.clear()
    second = build_dataset(CFG, [manifest])
    assert reads == []
    assert (second.valid, second.lengths) == (first.valid, first.lengths)


def test_unreadable_files_are_not_cached_and_still_skipped(corpus, monkeypatch):
    reads = _counting(monkeypatch)
    first = build_dataset(CFG, [corpus])
    assert len(reads) == 13 and 'missing.wav' not in _cached_paths(corpus)
    assert first.skip_counts() == {'missing_file': 1} and len(first) == 12
    reads.clear()
    second = build_dataset(CFG, [corpus])
    assert reads == ['missing.wav']  # the good headers come from the cache; failures are tried again
    assert (second.valid, second.lengths, second.skip_counts()) == (first.valid, first.lengths, first.skip_counts())


def test_cache_follows_the_manifest_content(corpus, monkeypatch):
    build_dataset(CFG, [corpus])
    rows = [json.loads(line) for line in open(corpus)]
    write_manifest(corpus, rows[:5])  # another manifest under the same name
    reads = _counting(monkeypatch)
    dataset = build_dataset(CFG, [corpus])
    assert sorted(reads) == sorted(os.path.basename(r['audio_filepath']) for r in rows[:5]) and len(dataset) == 5
    assert _cached_paths(corpus) == sorted(reads)
    with open(header_scan.cache_path(corpus), 'w') as f:
        f.write('{"version": 1, "manif')  # a cache cut short: read again, and rewritten
    reads.clear()
    build_dataset(CFG, [corpus])
    assert len(reads) == 5 and _cached_paths(corpus) == sorted(reads)


def test_a_read_only_folder_builds_without_a_cache(tmp_path, monkeypatch, caplog):
    manifest = make_corpus(tmp_path, n=4)
    os.chmod(tmp_path, 0o555)
    if os.geteuid() == 0:  # the mode does not stop root: refuse the new file as the filesystem would
        def refuse(prefix, dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, prefix))
        monkeypatch.setattr(header_scan.tempfile, 'mkstemp', refuse)
    try:
        with caplog.at_level(logging.INFO, 'megatron_salm_mtp.data'):
            dataset = build_dataset(CFG, [manifest])
    finally:
        os.chmod(tmp_path, 0o755)
    assert len(dataset) == 4 and sorted(os.listdir(tmp_path)) == ['train.jsonl', 'wav']
    assert any('not cached' in r.getMessage() and 'Permission denied' in r.getMessage() for r in caplog.records)


def test_other_errors_are_raised_not_skipped(corpus, monkeypatch):
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    monkeypatch.setattr(header_scan, 'audio_info', denied)
    with pytest.raises(PermissionError):
        build_dataset(CFG, [corpus])


def test_progress_lines(corpus, monkeypatch, caplog):
    monkeypatch.setattr(header_scan, 'PROGRESS_SECONDS', 0.0)
    with caplog.at_level(logging.INFO, 'megatron_salm_mtp.data'):
        build_dataset(CFG, [corpus])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('audio headers')]
    assert lines[0] == 'audio headers: 0 cached beside the manifest, 13 to read over 1 rank(s)'
    progress = [line for line in lines if 'files/s' in line]
    assert len(progress) == 13 and progress[0].startswith("audio headers (rank 0's share): 1/13 files (8%)")
    assert 'ETA' in progress[0] and 'done in' in progress[-1]
    assert 'audio headers: 1 of 13 could not be read' in lines[-1]
    caplog.clear()
    with caplog.at_level(logging.INFO, 'megatron_salm_mtp.data'):
        build_dataset(CFG, [corpus])
    assert 'audio headers: 12 cached beside the manifest, 1 to read over 1 rank(s)' in caplog.messages


def test_ranks_split_the_headers_and_agree(corpus, tmp_path):
    """Two gloo ranks: each opens about half of the headers; both build the dataset of one process;
    the second build of each reads only the file that failed; an error other than unreadable audio
    on one rank is raised on both."""
    single = build_dataset(CFG, [corpus])
    os.remove(header_scan.cache_path(corpus))
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2',
                           f'--master-port={free_port()}', support_script('header_scan_ranks.py'), corpus,
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f'rank{r}.json')) for r in range(2)]
    assert [len(r['reads']) for r in ranks] == [7, 6]  # 13 files, split
    assert set(ranks[0]['reads']).isdisjoint(ranks[1]['reads'])
    assert sorted(os.path.basename(p) for r in ranks for p in r['reads_again']) == ['missing.wav']
    for rank in ranks:
        assert (rank['valid'], rank['lengths'], rank['skips']) == (single.valid, single.lengths, single.skip_counts())
    assert [r['raised'] for r in ranks] == ['PermissionError', 'PermissionError']
