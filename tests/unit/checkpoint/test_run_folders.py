"""Save folders: a run never rewinds checkpoints it does not resume from, and two runs never share
one folder (a lock naming the holder); --load folders that cannot start a run are refused."""

import os
import subprocess
import sys

import pytest

from megatron_salm_mtp.checkpoint.layout import MARKER, TRACKER, CheckpointError
from megatron_salm_mtp.checkpoint.run_folders import (
    FolderLock,
    check_load_folder,
    check_save_folder,
    claim_checkpoint_folders,
)
from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.convert.__main__ import main as convert_main
from tests.support.process import ROOT

HOLD = """
import sys
from megatron_salm_mtp.checkpoint.run_folders import FolderLock
FolderLock(sys.argv[1], '--save')
print('held', flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def fake_checkpoints(root, iterations, tracker=None, complete=True):
    for iteration in iterations:
        path = os.path.join(root, f'iter_{iteration:07d}')
        os.makedirs(path)
        if complete:
            open(os.path.join(path, MARKER), 'w').close()
    if tracker is not None:
        with open(os.path.join(root, TRACKER), 'w') as f:
            f.write(f'{tracker}\n')
    return str(root)


def test_a_fresh_run_into_a_newer_checkpoint_is_refused(tmp_path):
    save = fake_checkpoints(tmp_path / 'ck', [2, 4], tracker=4)
    with pytest.raises(ConfigError, match=rf"--save {save} already holds iter_0000002, iter_0000004 and "
                                          rf"{TRACKER} naming '4', and this run does not resume from it"):
        check_save_folder(save, None, overwrite=False)
    with pytest.raises(ConfigError, match='--overwrite-save'):
        check_save_folder(save, str(tmp_path / 'init'), overwrite=False)  # fine-tuning from elsewhere
    check_save_folder(save, save + '/', overwrite=False)  # resuming it: the same folder, spelt otherwise
    assert sorted(os.listdir(save)) == ['iter_0000002', 'iter_0000004', TRACKER]


def test_overwrite_save_deletes_the_old_checkpoints_only(tmp_path):
    save = fake_checkpoints(tmp_path / 'ck', [2, 4], tracker=4)
    (tmp_path / 'ck' / 'metrics.jsonl').write_text('{}\n')
    check_save_folder(save, None, overwrite=True)
    assert os.listdir(save) == ['metrics.jsonl']
    check_save_folder(save, None, overwrite=False)  # nothing left to rewind


def test_empty_or_missing_save_folders_are_fine(tmp_path):
    check_save_folder(str(tmp_path / 'missing'), None, overwrite=False)
    os.makedirs(tmp_path / 'leftover' / 'iter_0000003.tmp-ab12')  # an interrupted first save
    check_save_folder(str(tmp_path / 'leftover'), None, overwrite=False)


def test_import_hf_into_a_training_checkpoint_is_refused(tmp_path, capsys):
    out = fake_checkpoints(tmp_path / 'run', [4], tracker=4)
    with pytest.raises(SystemExit) as exit_:
        convert_main(['import-hf', '--llm', str(tmp_path / 'qwen'), '--out', out])
    assert exit_.value.code == 2
    assert f'error: --out {out} already holds iter_0000004' in capsys.readouterr().err
    assert (tmp_path / 'run' / TRACKER).read_text() == '4\n'


def test_a_second_run_on_a_locked_folder_names_the_holder(tmp_path):
    folder = str(tmp_path / 'ck')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    holder = subprocess.Popen([sys.executable, '-c', HOLD, folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(ConfigError, match=rf'--save {folder} is in use by another run \(pid {holder.pid} on '):
            FolderLock(folder, '--save')
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    FolderLock(folder, '--save').release()  # the holder is gone: free again


@pytest.mark.parametrize('layout,same_as_save,error', [
    ('missing', True, None),  # the first job of `--load X --save X`
    ('missing', False, 'no such folder'),
    ('empty', True, None),
    ('empty', False, 'the folder holds no checkpoint'),
    ('tmp_leftover', True, None),  # the first save was interrupted before its marker
    ('unmarked', True, 'no complete checkpoint among iter_0000004 \\(incomplete\\)'),
    ('tracker_only', True, f"no complete checkpoint among no checkpoint folder and {TRACKER} naming '7'"),
])
def test_load_folders(tmp_path, layout, same_as_save, error):
    load = tmp_path / 'ck'
    if layout != 'missing':
        os.makedirs(load)
    if layout == 'tmp_leftover':
        os.makedirs(load / 'iter_0000004.tmp-ab12')
    if layout == 'unmarked':
        fake_checkpoints(load, [4], complete=False)
    if layout == 'tracker_only':
        (load / TRACKER).write_text('7\n')
    save = str(load) if same_as_save else str(tmp_path / 'other')
    if error is None:
        check_load_folder(str(load), save)
    else:
        with pytest.raises(ConfigError, match=f'--load {load}: {error}'):
            check_load_folder(str(load), save)
    if layout in ('unmarked', 'tracker_only'):
        with pytest.raises(CheckpointError):
            check_load_folder(str(load), save)


def test_claim_raises_on_every_rank_and_keeps_the_lock(single_rank_parallel, tmp_path):
    save = fake_checkpoints(tmp_path / 'ck', [4], tracker=4)
    with pytest.raises(ConfigError, match='already holds iter_0000004'):
        claim_checkpoint_folders(None, save, overwrite=False)
    fresh = str(tmp_path / 'fresh')
    lock = claim_checkpoint_folders(fresh, fresh, overwrite=False)
    assert lock is not None and open(os.path.join(fresh, 'run.lock')).read().startswith(f'pid {os.getpid()} on ')
    lock.release()
