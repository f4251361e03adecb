"""Where a checkpoint lives and what is on disk in it, checked before dist_checkpointing reads it.

A run's folder holds ``iter_NNNNNNN`` checkpoint folders and the tracker naming the latest; a
checkpoint counts once its marker exists (``save_load.py`` writes it last).

A deleted ``common.pt`` surfaces from dist_checkpointing as ``AttributeError: 'str' object has no
attribute 'iterdir'`` and a truncated shard as a bare ``EOFError``, neither naming a path. Each
file a checkpoint needs is checked first, and every shard against the byte ranges that the
``torch_dist`` index (``.metadata``) records for it, so the error names the folder and the file.
"""

import json
import logging
import os
import re

from torch.distributed.checkpoint import FileSystemReader

from ..config import ConfigError

TRACKER = 'latest_checkpointed_iteration.txt'
MARKER = 'checkpoint_complete.json'
CONFIG_FILE = 'config.yaml'
DIST_CONFIG = 'metadata.json'  # dist_checkpointing's backend description
COMMON_STATE = 'common.pt'  # dist_checkpointing's common (non-sharded) state, up to 0.16
TORCH_DIST_INDEX = '.metadata'  # torch.distributed.checkpoint's index of the shard files
_ITER_DIR = re.compile(r'^iter_(\d{7,})$')

logger = logging.getLogger(__name__)


class CheckpointError(ConfigError):
    """A checkpoint folder that cannot be used; the message names the folder and the file."""


def checkpoint_iterations(root: str) -> list[int]:
    """Iterations of the ``iter_NNNNNNN`` folders under ``root``, complete or not (not the
    ``.tmp-`` folders of a save in progress or interrupted)."""
    if not os.path.isdir(root):
        return []
    return sorted(int(m.group(1)) for m in map(_ITER_DIR.match, os.listdir(root)) if m)


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f'iter_{iteration:07d}')


def is_complete(path: str) -> bool:
    """A checkpoint counts only once its marker exists; rank 0 writes it after every rank finished."""
    return os.path.isfile(os.path.join(path, MARKER))


def latest_checkpoint_iteration(load_dir: str) -> int | None:
    """Iteration of the newest complete checkpoint under ``load_dir``, or None.

    The tracker file decides (users roll back by editing it, as with Megatron-LM); when it is
    missing, unreadable or names an incomplete folder, the newest complete folder is taken.
    """
    if not os.path.isdir(load_dir):
        return None
    tracker = os.path.join(load_dir, TRACKER)
    if os.path.isfile(tracker):
        with open(tracker) as f:
            text = f.read().strip()
        if text.isdigit() and is_complete(checkpoint_dir(load_dir, int(text))):
            return int(text)
        logger.warning('%s names %r, which is no complete checkpoint: scanning %s instead',
                       tracker, text, load_dir)
    found = [i for i in checkpoint_iterations(load_dir) if is_complete(checkpoint_dir(load_dir, i))]
    return max(found) if found else None


def tracker_text(root: str) -> str | None:
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def describe(root: str) -> str:
    """The checkpoints in ``root`` in a few words, for error messages."""
    names = [f'iter_{i:07d}' + ('' if os.path.isfile(os.path.join(root, f'iter_{i:07d}', MARKER))
                                else ' (incomplete)') for i in checkpoint_iterations(root)]
    tracker = tracker_text(root)
    shown = ', '.join(names) if names else 'no checkpoint folder'
    return shown + (f' and {TRACKER} naming {tracker!r}' if tracker is not None else '')


def _shard_sizes_needed(path: str) -> dict:
    """Bytes each shard file must hold: the end of the last range the index records in it."""
    try:
        metadata = FileSystemReader(path).read_metadata()
    except Exception as err:  # a truncated or foreign index: torch raises several kinds
        raise CheckpointError(f'{path}: unreadable {TORCH_DIST_INDEX} ({type(err).__name__}: {err})') from err
    needed = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    return needed


def _require(path: str, name: str) -> None:
    if not os.path.isfile(os.path.join(path, name)):
        raise CheckpointError(f'{path}: {name} is missing (the checkpoint is damaged; '
                              f'{TRACKER} in the folder above picks which one loads)')


def verify_checkpoint_files(path: str) -> None:
    """Raise CheckpointError naming ``path`` and the file if one is missing or truncated."""
    for name in (CONFIG_FILE, DIST_CONFIG):
        _require(path, name)
    try:
        with open(os.path.join(path, DIST_CONFIG)) as f:
            backends = json.load(f)
    except ValueError as err:
        raise CheckpointError(f'{path}: unreadable {DIST_CONFIG} ({err})') from err
    if 'common_backend' in backends:  # megatron-core 0.16; later releases keep it in the shards
        _require(path, COMMON_STATE)
    if backends.get('sharded_backend') != 'torch_dist':
        return  # another backend: its own reader reports what it misses
    if not os.path.isfile(os.path.join(path, TORCH_DIST_INDEX)):
        raise CheckpointError(f'{path}: {TORCH_DIST_INDEX} (the shard index) is missing')
    for name, size in sorted(_shard_sizes_needed(path).items()):
        shard = os.path.join(path, name)
        if not os.path.isfile(shard):
            raise CheckpointError(f'{path}: shard {name} is missing')
        if os.path.getsize(shard) < size:
            raise CheckpointError(f'{path}: shard {name} is truncated ({os.path.getsize(shard)} bytes, '
                                  f'the index needs {size})')
