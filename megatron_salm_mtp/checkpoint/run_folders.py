"""The --save and --load folders, vetted once at start, before the model is built.

- One run per save folder: the first rank holds a POSIX lock on ``<save>/run.lock`` (its pid and
  host written inside) until it exits. A second run saving there would delete the first one's
  in-flight save as a stale leftover; it fails at start naming the holder instead. (POSIX locks,
  not flock: forked helpers do not inherit them, and NFS honours them.)
- No silent rollback: a save folder holding checkpoints that the run does not resume from (no
  ``--load`` of that folder) is refused: its first save would rewind the tracker (4 -> 2). The
  overwrite flag deletes them at start instead.
- ``--load``: a folder that does not exist is an error, except when it is also the save folder (the
  first job of a resumable launch: ``--load X --save X``); so is a folder that exists with no
  checkpoint, except that save folder again; a folder whose checkpoints are all incomplete, or a
  damaged file in the latest, is always an error.
"""

import fcntl
import logging
import os
import shutil
import socket

import torch

from ..config import ConfigError
from .layout import (
    TRACKER,
    CheckpointError,
    checkpoint_dir,
    checkpoint_iterations,
    describe,
    latest_checkpoint_iteration,
    tracker_text,
    verify_checkpoint_files,
)

logger = logging.getLogger(__name__)

LOCK_FILE = 'run.lock'


class FolderLock:
    """An exclusive POSIX lock on ``<folder>/run.lock``, held until ``release()`` or exit."""

    def __init__(self, folder: str, flag: str):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = os.read(self._fd, 200).decode(errors='replace').strip() or 'a process that wrote nothing yet'
            self.release()
            raise ConfigError(f"{flag} {folder} is in use by another run ({holder}; lock {self.path}): two "
                              "runs saving into one folder delete each other's saves") from None
        except OSError as err:  # a filesystem without locks (e.g. Lustre mounted without flock)
            self.release()
            logger.warning('%s: cannot lock (%s): nothing stops a second run from saving there', self.path, err)
            return
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def check_save_folder(save: str, load: str | None, overwrite: bool, flag: str = '--save',
                      overwrite_flag: str = '--overwrite-save') -> None:
    """Refuse ``save`` when it holds checkpoints this run does not resume from; with
    ``overwrite``, delete them (folders and tracker) instead."""
    iterations, tracker = checkpoint_iterations(save), tracker_text(save)
    if not iterations and tracker is None:
        return
    if load and os.path.realpath(load) == os.path.realpath(save):
        return  # resuming: later saves continue the folder's history
    if not overwrite:
        raise ConfigError(f'{flag} {save} already holds {describe(save)}, and this run does not resume '
                          f'from it: its saves would replace them and rewind the tracker. Resume with '
                          f'--load {save}, start over there with {overwrite_flag} (deletes them), or '
                          'choose another folder')
    logger.warning('%s %s: deleting %s (%s)', flag, save, describe(save), overwrite_flag)
    for iteration in iterations:
        shutil.rmtree(os.path.join(save, f'iter_{iteration:07d}'))
    if tracker is not None:
        os.remove(os.path.join(save, TRACKER))


def check_load_folder(load: str, save: str | None) -> None:
    """Errors for a ``--load`` folder that cannot start the run (see the module docstring)."""
    fresh_save_folder = bool(save) and os.path.realpath(load) == os.path.realpath(save)
    if not os.path.isdir(load):
        if fresh_save_folder:
            return
        raise ConfigError(f'--load {load}: no such folder')
    iteration = latest_checkpoint_iteration(load)
    if iteration is not None:
        verify_checkpoint_files(checkpoint_dir(load, iteration))
    elif checkpoint_iterations(load) or tracker_text(load) is not None:
        raise CheckpointError(f'--load {load}: no complete checkpoint among {describe(load)}')
    elif not fresh_save_folder:
        raise ConfigError(f'--load {load}: the folder holds no checkpoint (a resumable run gives the '
                          'same folder to --load and --save; its first job then starts from scratch)')


def claim_checkpoint_folders(load: str | None, save: str | None, overwrite: bool, flag: str = '--save',
                             overwrite_flag: str = '--overwrite-save') -> FolderLock | None:
    """Collective: the first rank vets ``load``, locks and vets ``save``; every rank then raises
    the same ConfigError, or all go on (the lock is returned: keep it for the run)."""
    lock, problem = None, [None]
    if torch.distributed.get_rank() == 0:
        try:
            if load:
                check_load_folder(load, save)
            if save:
                lock = FolderLock(save, flag)
                check_save_folder(save, load, overwrite, flag, overwrite_flag)
        except ConfigError as err:
            problem = [str(err)]
            if lock is not None:
                lock.release()
    torch.distributed.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise ConfigError(problem[0])
    return lock
