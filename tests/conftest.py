import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# Fixtures of tests/support declared here once: a session fixture imported into several test
# modules would be a separate fixture (and corpus) per module.
from tests.support.data_fixtures import espeak_corpus, tiny_corpus  # noqa: F401
from tests.support.hf_fixtures import hf_models  # noqa: F401
from tests.support.process import FORK_SERVER_VARIABLE, child_env, support_script


def pytest_configure(config):
    config.addinivalue_line('markers', 'quality: trains a model and scores it (minutes); .ci/run runs these on '
                                       'its first stack only')


def pytest_collection_modifyitems(items):
    """The scored trainings (minutes each) first: tests/run.sh's workers take a file each as they
    free up, and the longest file taken last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker('quality') is None)


@pytest.fixture(scope='session', autouse=True)
def fork_server():
    """This worker's fork server (tests/support/fork_server.py): launches through
    ``process.rank_launcher`` fork from it instead of paying the imports again; until it is ready
    (its imports take seconds) they start a plain interpreter."""
    folder = tempfile.mkdtemp(prefix='salm-fork-')  # short: a socket path has at most 107 bytes
    path = os.path.join(folder, 'socket')
    server = subprocess.Popen([sys.executable, support_script('fork_server.py'), path], env=child_env(),
                              stdin=subprocess.DEVNULL)
    os.environ[FORK_SERVER_VARIABLE] = path
    yield path
    del os.environ[FORK_SERVER_VARIABLE]
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='session')
def single_rank_parallel():
    """A one-rank gloo group and Megatron-Core's parallel state inside the pytest process."""
    from megatron.core import parallel_state

    from megatron_salm_mtp.parallel.setup import init_distributed, init_model_parallel
    from tests.support.parallel_utils import tiny_config
    if not parallel_state.model_parallel_is_initialized():
        init_distributed(lone=True)  # an in-memory store: no port, nothing left in the environment
        init_model_parallel(tiny_config(), seed=0)


@pytest.fixture(scope='session')
def train_corpus(tmp_path_factory):
    """96 synthetic utterances of 1-3 s (train/valid/test/test_unseen), shared by the training tests."""
    from megatron_salm_mtp.tools.corpus.espeak import espeak_available
    from megatron_salm_mtp.tools.corpus.synth import build_corpus
    if not espeak_available():
        pytest.skip('espeak-ng unavailable')
    out = tmp_path_factory.mktemp('train_corpus')
    build_corpus(str(out), 96, seed=1, max_seconds=3.0)
    return str(out)
