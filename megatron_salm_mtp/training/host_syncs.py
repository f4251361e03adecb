"""Where a training step makes the host wait for the GPU.

Each such wait (a value read back, a boolean-mask index, a copy from unpinned memory) lets the GPU's
queue run dry; on a step whose kernel launches take about as long as the kernels, the waits decide
the step time. ``recorded_host_syncs`` counts them by the Python line that asked, using torch's sync
debug mode (on CUDA; nothing is recorded on CPU).
"""

import contextlib
import os
import traceback
import warnings
from collections import Counter

import torch

_TORCH_SYNC_WARNING = 'synchronizing CUDA operation'
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_SKIPPED_FILES = {os.path.abspath(__file__), warnings.__file__, contextlib.__file__}


def _asking_line() -> str:
    """'package/file.py:line in function' of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_TORCH_DIR) and path not in _SKIPPED_FILES:
            short = '/'.join(frame.filename.split('/')[-3:])
            return f'{short}:{frame.lineno} in {frame.name}'
    return 'unknown'


@contextlib.contextmanager
def recorded_host_syncs(sites: Counter):
    """Count every synchronising CUDA call inside the block into ``sites`` (line -> calls)."""
    if not torch.cuda.is_available():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if _TORCH_SYNC_WARNING in str(message):
                sites[_asking_line()] += 1
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode('warn')
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode('default')
