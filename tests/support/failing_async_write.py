"""A checkpoint written in the background whose writer fails, through the entry point's error path:

    python tests/support/failing_async_write.py FOLDER

One rank (gloo): ``dist_checkpointing.save`` of a 1 MB tensor into FOLDER as an async request, its
writer process started under a 64 KB file-size limit (inherited; SIGXFSZ ignored, so the write
fails instead of the writer being killed), then :class:`PendingSaves` finalizes it as training does
and the error goes to ``cli.exit_on_run_error`` as ``train.main`` sends it.
"""

import logging
import os
import resource
import signal
import sys

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_salm_mtp.checkpoint.save_strategies import PendingSaves, save_strategy
from megatron_salm_mtp.cli import exit_on_run_error
from megatron_salm_mtp.compat.mcore import async_save_options
from megatron_salm_mtp.config_checks import RunError
from megatron_salm_mtp.parallel.setup import init_distributed, init_model_parallel
from tests.support.parallel_utils import tiny_config

LIMIT_BYTES = 64 * 1024


def main(folder: str) -> None:
    logging.basicConfig(stream=sys.stdout)  # as training logs: the writer's own report goes there
    init_distributed(lone=True)
    init_model_parallel(tiny_config(), seed=0)
    os.makedirs(folder)
    state = {'weight': ShardedTensor.from_rank_offsets('weight', torch.randn(512, 512))}
    request = dist_checkpointing.save(state, folder, save_strategy(), **async_save_options())
    pending = PendingSaves()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.RLIM_INFINITY))
    pending.schedule(request, folder)  # starts the writer, which keeps the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    try:
        pending.finalize(blocking=True)
    except RunError as err:
        exit_on_run_error(err)
    print('the write did not fail')


if __name__ == '__main__':
    main(sys.argv[1])
