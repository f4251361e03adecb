import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def single_rank_parallel():
    """A one-rank gloo group and Megatron-Core's parallel state inside the pytest process."""
    from megatron.core import parallel_state

    from megatron_salm_mtp.parallel.setup import init_distributed, init_model_parallel
    from parallel_utils import tiny_config
    from train_utils import free_port
    if not parallel_state.model_parallel_is_initialized():
        saved = dict(os.environ)
        os.environ['MASTER_PORT'] = str(free_port())
        try:
            init_distributed()
            init_model_parallel(tiny_config(), seed=0)
        finally:  # the rendezvous variables must not leak into launchers spawned by later tests
            os.environ.clear()
            os.environ.update(saved)
