"""The one place that silences optional packages' import-time notices.

Megatron-Core warns on import when Transformer Engine, Apex or absl are missing (four
``UserWarning``s and a logger line per process), and torch's C++-extension module logs "No CUDA
runtime is found" on a CPU host; every ``--help``, every one-line error and every rank's log began
with them. A run logs which transformer implementation and optimizer kernels it uses instead
(``training/optim.py``), so nothing is lost. Installed by ``megatron_salm_mtp/__init__.py``, before
any of those modules is imported.
"""

import logging
import warnings

OPTIONAL_PACKAGE_NOTICES = (r'Transformer Engine and Apex are not installed',
                            r'Apex is not installed', r'absl\.logging is not installed')
QUIET_LOGGERS = ('torch.utils.cpp_extension',)


def silence_optional_package_notices() -> None:
    for notice in OPTIONAL_PACKAGE_NOTICES:
        warnings.filterwarnings('ignore', message=f'.*{notice}')
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
