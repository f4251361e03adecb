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
    if not parallel_state.model_parallel_is_initialized():
        init_distributed(lone=True)  # an in-memory store: no port, nothing left in the environment
        init_model_parallel(tiny_config(), seed=0)
