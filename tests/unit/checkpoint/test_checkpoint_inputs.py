"""Damaged checkpoints and bad tool input: one clear error naming the folder and file (or the
flag), never an AttributeError or a bare EOFError from deep inside dist_checkpointing."""

import os
import shutil
import subprocess
import sys

import pytest

from megatron_salm_mtp import generate
from megatron_salm_mtp.checkpoint.layout import CheckpointError, verify_checkpoint_files
from megatron_salm_mtp.checkpoint.save_load import load_checkpoint
from tests.support.process import ROOT, child_env, preimported_python, support_script

ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tiny SALM saved at iteration 1 by a lone process (no launcher)."""
    out = str(tmp_path_factory.mktemp('ckpt') / 'ck')
    done = subprocess.run([*preimported_python(), support_script('inference_ckpt.py'), '--out', out],
                          env=child_env(ENV), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _damaged(checkpoint, tmp_path, damage):
    root = str(tmp_path / 'damaged')
    shutil.copytree(checkpoint, root)
    path = os.path.join(root, 'iter_0000001')
    shards = sorted(n for n in os.listdir(path) if n.endswith('.distcp'))
    damage(path, shards)
    return root, path


def _truncate(file, size):
    with open(file, 'r+b') as f:
        f.truncate(size)


DAMAGES = {
    'common.pt deleted': (lambda p, s: os.remove(os.path.join(p, 'common.pt')), 'common.pt is missing'),
    'common.pt truncated': (lambda p, s: _truncate(os.path.join(p, 'common.pt'), 300), 'unreadable common.pt'),
    'shard truncated': (lambda p, s: _truncate(os.path.join(p, s[-1]), 1000),
                        'is truncated (1000 bytes, the index needs'),
    'shard deleted': (lambda p, s: os.remove(os.path.join(p, s[0])), 'is missing'),
    'metadata.json deleted': (lambda p, s: os.remove(os.path.join(p, 'metadata.json')), 'metadata.json is missing'),
    'index deleted': (lambda p, s: os.remove(os.path.join(p, '.metadata')), '.metadata (the shard index) is missing'),
    'config.yaml deleted': (lambda p, s: os.remove(os.path.join(p, 'config.yaml')), 'config.yaml is missing'),
}


def test_the_intact_checkpoint_passes(checkpoint):
    verify_checkpoint_files(os.path.join(checkpoint, 'iter_0000001'))


@pytest.mark.parametrize('name', sorted(DAMAGES))
def test_damage_is_named_with_folder_and_file(checkpoint, tmp_path, name):
    damage, message = DAMAGES[name]
    if name.startswith('common.pt') and not os.path.exists(os.path.join(checkpoint, 'iter_0000001', 'common.pt')):
        pytest.skip('this megatron-core keeps the common state inside the shards')
    root, path = _damaged(checkpoint, tmp_path, damage)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(root, [], None, None)
    assert str(err.value).startswith(f'{path}: ') and message in str(err.value), str(err.value)


def _generate_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        generate.main(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_generate_refuses_bad_input_before_any_process_group(checkpoint, tmp_path, capsys):
    assert '--max-new-tokens must be >= 1, got 0' in _generate_error(
        capsys, '--load', checkpoint, '--prompt-ids', '1,2', '--max-new-tokens', '0')
    assert "--prompt-ids: id(s) [100000, -1] outside the checkpoint's vocabulary (0..271)" in _generate_error(
        capsys, '--load', checkpoint, '--prompt-ids', '5,100000,-1')
    assert "--prompt-ids '1,x': expected comma-separated integers" in _generate_error(
        capsys, '--load', checkpoint, '--prompt-ids', '1,x')
    assert '--prompt-ids: the prompt holds no token' in _generate_error(capsys, '--load', checkpoint,
                                                                        '--prompt-ids', ',')
    root, path = _damaged(checkpoint, tmp_path, DAMAGES['shard deleted'][0])
    assert f'{path}: shard __0_0.distcp is missing' in _generate_error(capsys, '--load', root, '--prompt-ids', '1')


def test_training_refuses_a_damaged_load_and_a_foreign_save_folder(checkpoint, tmp_path):
    manifest = tmp_path / 'm.jsonl'
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    train = ['-m', 'megatron_salm_mtp.train', '--train-manifest', str(manifest)]
    root, path = _damaged(checkpoint, tmp_path, DAMAGES['shard truncated'][0])
    done = subprocess.run(preimported_python() + train + ['--load', root], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and errors[0].startswith(f'error: {path}: shard __0_'), done.stderr[-3000:]
    assert 'is truncated (1000 bytes' in errors[0]
    # Two ranks: rank 0 decides, both stop (none waits in a collective), one of them says why.
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2']
                          + train + ['--save', checkpoint], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert done.stderr.count(f'error: --save {checkpoint} already holds iter_0000001 and ') == 1, done.stderr[-3000:]


def test_load_of_only_incomplete_checkpoints_is_an_error(tmp_path):
    os.makedirs(tmp_path / 'ck' / 'iter_0000004')  # no completion marker
    with pytest.raises(CheckpointError, match=r'--load .*ck: no complete checkpoint among iter_0000004 \(incomplete\)'):
        load_checkpoint(str(tmp_path / 'ck'), [], None, None)
    os.makedirs(tmp_path / 'first' / 'iter_0000004.tmp-ab12')  # a first save interrupted: nothing to load
    assert load_checkpoint(str(tmp_path / 'first'), [], None, None) is None
