"""launch/train_salm_mtp.sbatch, run for real under a single-node Slurm on CPU.

The module fixture starts slurmctld, slurmd and munged with every file under a temporary folder
(tests/support/slurm_cluster.sh; Debian's slurm-wlm and munge are installed with apt-get when missing and
this runs as root) and stops them afterwards, also when a test fails. The jobs run the tiny
configuration without a container: one srun task running torchrun with two gloo ranks, the same
script and code path as a GPU cluster's, with GPUS_PER_NODE=2 and `--gpus-per-node=0`.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import process
from tests.support.process import free_port

ROOT = Path(process.ROOT)
HELPER = Path(process.support_script('slurm_cluster.sh'))
SCRIPT = 'launch/train_salm_mtp.sbatch'
DONE = {'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE'}
LINE = re.compile(r'^iteration\s+(\d+)/\s*(\d+) \|.* lm loss: [0-9.E+-]+ \|.* mtp_1 loss: [0-9.E+-]+ ', re.M)


def _slurm_installed() -> bool:
    return all(shutil.which(tool) for tool in ('slurmctld', 'slurmd', 'munged', 'sbatch'))


def _bash(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(HELPER), *args], capture_output=True, text=True, timeout=timeout, **kwargs)


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}  # no outer job's
        self.env['SLURM_CONF'] = str(folder / 'slurm.conf')
        self.jobs = []

    def run(self, *cmd) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True, timeout=30).stdout

    def submit(self, log: Path, env: dict, train_flags=()) -> str:
        out = subprocess.run(['sbatch', '--parsable', '--gpus-per-node=0', '--time=5', f'--output={log}',
                              SCRIPT, *train_flags],
                             cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f'sbatch failed: {out.stderr}'
        job = out.stdout.strip().split(';')[0]
        self.jobs.append(job)
        return job

    def job(self, job: str) -> dict:
        """The job's fields; {} if slurmctld did not answer this time (it can lag on a busy machine)."""
        out = subprocess.run(['scontrol', 'show', 'job', '-o', job], env=self.env, capture_output=True,
                             text=True, timeout=30)
        return dict(re.findall(r'(\w+)=(\S*)', out.stdout)) if out.returncode == 0 else {}

    def wait(self, job: str, timeout: float, log: Path, on_poll=None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job)
            if on_poll is not None:
                on_poll(info)
            if info.get('JobState') in DONE:
                return info
            time.sleep(0.5)
        pytest.fail(f'job {job} still {info.get("JobState")} after {timeout} s\n{self.diagnostics(log)}')

    def diagnostics(self, log: Path = None) -> str:
        parts = []
        for path in filter(None, (log, self.folder / 'slurmctld.log', self.folder / 'slurmd.log')):
            text = path.read_text(errors='replace') if path.exists() else '(missing)'
            parts.append(f'--- {path.name} (tail)\n' + '\n'.join(text.splitlines()[-40:]))
        return '\n'.join(parts)

    def cancel_all(self):
        if not self.jobs:
            return
        subprocess.run(['scancel', *self.jobs], env=self.env, capture_output=True, timeout=30)
        for _ in range(60):  # let slurmd reap the steps before it goes away
            states = subprocess.run(['squeue', '-h', '-o', '%T', '-j', ','.join(self.jobs)], env=self.env,
                                    capture_output=True, text=True, timeout=30).stdout.split()
            if not states:
                return
            time.sleep(0.5)


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    if not sys.platform.startswith('linux'):
        pytest.skip('the Slurm launch test needs Linux')
    if os.geteuid() != 0:
        pytest.skip('the Slurm launch test runs slurmd and munged as root (run the suite as root, as CI does)')
    if not _slurm_installed():
        if not shutil.which('apt-get'):
            pytest.skip('slurm-wlm/munge are not installed and there is no apt-get to install them')
        try:
            out = _bash('install', timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip('apt-get install slurm-wlm munge took over 10 minutes')
        if out.returncode != 0 or not _slurm_installed():
            pytest.skip(f'could not install slurm-wlm/munge: {out.stderr.strip()[-500:]}')
    folder = tmp_path_factory.mktemp('slurm')
    cluster = Cluster(folder)
    try:
        started = _bash('start', str(folder))
        assert started.returncode == 0, f'single-node Slurm did not start: {started.stderr}\n' \
                                        f'{cluster.diagnostics()}'
        yield cluster
    finally:
        cluster.cancel_all()
        _bash('stop', str(folder))


def _job_env(corpus: str, save: Path, **extra) -> dict:
    # A free port rather than the script's job-id-derived one: every fresh cluster starts at job 1.
    return {'CONTAINER_IMAGE': '', 'CONFIG': 'configs/tiny_cpu.yaml', 'GPUS_PER_NODE': '2',
            'MASTER_PORT': str(free_port()),
            'TRAIN_MANIFEST': os.path.join(corpus, 'train.jsonl'),
            'VALID_MANIFEST': os.path.join(corpus, 'valid.jsonl'),
            'SAVE_DIR': str(save), 'PYTHON': sys.executable,
            'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1', **extra}


def _metrics(save: Path):
    with open(save / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


def test_sbatch_trains_tiny_config_with_two_ranks(slurm, espeak_corpus, tmp_path):
    log, save = tmp_path / 'job.out', tmp_path / 'run'
    job = slurm.submit(log, _job_env(espeak_corpus, save),
                       train_flags=['--train-iters', '4', '--lr-warmup-iters', '1', '--log-interval', '2',
                                    '--eval-interval', '0'])
    info = slurm.wait(job, 150, log)
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), slurm.diagnostics(log)
    text = log.read_text()
    assert [m.groups() for m in LINE.finditer(text)] == [('2', '4'), ('4', '4')], slurm.diagnostics(log)
    assert '--nproc-per-node 2' in text and 'TP=1 PP=1' in text
    records = [r for r in _metrics(save) if r['split'] == 'train']
    assert [r['iteration'] for r in records] == [2, 4]
    assert all(0 < r['lm loss'] < 20 and 'mtp_1 loss' in r for r in records)
    # Both ranks took part: each wrote its shard of the final checkpoint (DP=2).
    assert (save / 'latest_checkpointed_iteration.txt').read_text().strip() == '4'
    assert len(list((save / 'iter_0000004').glob('__*_0.distcp'))) == 2


def test_sigusr1_saves_requeues_and_resumes(slurm, espeak_corpus, tmp_path):
    """Preemption as Slurm does it 120 s before the time limit: SIGUSR1 to every process of the step.

    The ranks save at the next step boundary and exit 0, the script requeues the job, and the
    requeued run (same job id and log) resumes from the checkpoint and finishes. Slurm holds a
    requeued job for about two minutes; the test releases it after three seconds.
    """
    log, save = tmp_path / 'job.out', tmp_path / 'run'
    # An earlier periodic save (iteration 2) started dist_checkpointing's writer process: the
    # signal must not kill it, or the preemption save breaks.
    job = slurm.submit(log, _job_env(espeak_corpus, save, PP='2', SAVE_INTERVAL='2'),
                       train_flags=['--train-iters', '8', '--lr-warmup-iters', '1', '--log-interval', '1',
                                    '--eval-interval', '0'])
    events = {'signalled': False, 'released': False}

    def poll(info):
        if not events['signalled'] and log.exists() and re.search(r'^iteration\s+3/', log.read_text(), re.M):
            slurm.run('scancel', '--signal=USR1', job)
            events['signalled'] = True
        if info.get('JobState') == 'PENDING' and int(info.get('Restarts', 0)) >= 1 and not events['released']:
            # Not at once: slurmd refuses a credential issued in the second it revoked the last run's.
            slurm.run('scontrol', 'update', f'JobId={job}', 'StartTime=now+3')
            events['released'] = True

    info = slurm.wait(job, 150, log, on_poll=poll)
    text = log.read_text()
    assert (info['JobState'], info['ExitCode'], info['Restarts']) == ('COMPLETED', '0:0', '1'), \
        slurm.diagnostics(log)
    assert 'received signal 10' in text and 'PP=2' in text
    stopped = re.search(r'checkpoint at iteration (\d+) of 8: requeueing', text)
    assert stopped, slurm.diagnostics(log)
    saved = int(stopped.group(1))
    assert 2 <= saved < 8
    assert re.search(rf'resumed from \S+ at iteration {saved}\b', text)
    # Each iteration ran once: the first run up to the save, the requeued run from there on.
    assert [int(m.group(1)) for m in LINE.finditer(text)] == list(range(1, 9))
    assert [r['iteration'] for r in _metrics(save) if r['split'] == 'train'] == list(range(1, 9))
    assert (save / 'latest_checkpointed_iteration.txt').read_text().strip() == '8'
    assert (save / f'iter_{saved:07d}').is_dir()


def _container_env(slurm, tmp_path) -> dict:
    """A 4-node pyxis job's environment, every path it is given a real one under tmp_path."""
    for folder in ('data', 'valid', 'models/Qwen3-8B', 'init', 'audio'):
        (tmp_path / folder).mkdir(parents=True)
    for manifest in ('data/a.jsonl', 'data/b.jsonl', 'valid/v.jsonl'):
        (tmp_path / manifest).write_text('')
    return {**slurm.env, 'DRY_RUN': '1', 'SLURM_JOB_ID': '4242', 'SLURM_NNODES': '4',
            'SLURM_JOB_NODELIST': 'gpu[07-10]', 'SLURM_SUBMIT_DIR': str(ROOT), 'SLURM_CPUS_ON_NODE': '96',
            'SLURM_GPUS_PER_NODE': 'h100:8', 'CONTAINER_IMAGE': str(tmp_path / 'salm-mtp.sqsh'),
            'CONFIG': 'configs/salm_8b_tp2pp2.yaml',
            'TRAIN_MANIFEST': f'{tmp_path}/data/a.jsonl,{tmp_path}/data/b.jsonl',
            'VALID_MANIFEST': f'{tmp_path}/valid/v.jsonl', 'DATA_MOUNTS': str(tmp_path / 'audio'),
            'TOKENIZER_MODEL': str(tmp_path / 'models/Qwen3-8B'), 'LOG_DIR': str(tmp_path / 'logs'),
            'SAVE_DIR': str(tmp_path / 'ckpt'), 'INIT_DIR': str(tmp_path / 'init')}


def test_sbatch_container_command(slurm, tmp_path):
    """The pyxis path, which needs a GPU cluster to run for real: the srun line it would launch
    (DRY_RUN=1), then that step's shell run here with a stand-in `python` printing its argv."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'python').write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$ARGV_LOG"\n'  # argv, then ignored signals
                                 'awk \'/^SigIgn/ {print "SigIgn " $2}\' /proc/$$/status >> "$ARGV_LOG"\n')
    (fake / 'python').chmod(0o755)
    env = _container_env(slurm, tmp_path)
    out = subprocess.run(['bash', SCRIPT, '--system-prompt', "Say 'hi' twice", '--lr', '1e-4',
                          '--tensorboard-dir', str(tmp_path / 'tb')], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    srun = out.stdout.splitlines()[-1]
    argv = shlex.split(srun.split(' bash -c ')[0])
    assert srun.startswith('srun --nodes 4 --ntasks-per-node 1 ') and '--cpus-per-task 96' in srun
    # The image the Dockerfile makes, home not mounted, and every path the job is given mounted
    # at its own path (files by their folder; written folders made first); nothing else.
    assert argv[argv.index('--container-image') + 1] == str(tmp_path / 'salm-mtp.sqsh')
    assert '--no-container-mount-home' in argv
    mounts = argv[argv.index('--container-mounts') + 1].split(',')
    folders = [ROOT] + [tmp_path / f for f in ('ckpt', 'init', 'logs', 'models/Qwen3-8B', 'data', 'valid',
                                               'audio', 'tb')]
    assert sorted(mounts) == sorted(f'{f}:{f}' for f in folders)
    assert (tmp_path / 'logs').is_dir() and (tmp_path / 'tb').is_dir()
    step = subprocess.run(['bash', '-c', f'srun() {{ shift $(($# - 3)); "$@"; }}; {srun}'], cwd=ROOT,
                          env={**env, 'PATH': f'{fake}:{os.environ["PATH"]}', 'SLURM_NODEID': '3',
                               'ARGV_LOG': str(tmp_path / 'argv')}, capture_output=True, text=True, timeout=30)
    assert step.returncode == 0, step.stderr
    # Nothing is installed at job start: the step runs torchrun straight away.
    torchrun, torchrun_mask = (tmp_path / 'argv').read_text().splitlines()
    assert torchrun.startswith('-m torch.distributed.run --nnodes 4 --nproc-per-node 8 --master-addr gpu07 '
                               '--master-port 24242 --node-rank 3 -m megatron_salm_mtp.train ')
    for flags in ('--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2',
                  f'--train-manifest {tmp_path}/data/a.jsonl,{tmp_path}/data/b.jsonl',
                  f'--tokenizer-model {tmp_path}/models/Qwen3-8B',
                  f'--save {tmp_path / "ckpt"} --load {tmp_path / "init"}', "--system-prompt Say 'hi' twice --lr 1e-4"):
        assert flags in torchrun
    usr1 = 1 << (10 - 1)  # torchrun ignores SIGUSR1: Slurm's signal is for the ranks
    assert int(torchrun_mask.split()[1], 16) & usr1


@pytest.mark.parametrize('change, message', [
    ({'TOKENIZER_MODEL': '/no/such/Qwen3-8B'}, 'TOKENIZER_MODEL /no/such/Qwen3-8B: no such file or folder'),
    ({'TRAIN_MANIFEST': '/no/such/train.jsonl'}, 'MANIFEST /no/such/train.jsonl: no such file or folder'),
    ({'DATA_MOUNTS': '/no/such/audio'}, 'DATA_MOUNTS /no/such/audio: no such file or folder'),
    ({'CONTAINER_IMAGE': None}, 'no container image: build the Dockerfile'),
])
def test_sbatch_refuses_paths_the_container_cannot_see(slurm, tmp_path, change, message):
    """A path that is not there would fail inside the container after the job queued: the script
    stops before srun, naming the setting."""
    env = {k: v for k, v in {**_container_env(slurm, tmp_path), **change}.items() if v is not None}
    out = subprocess.run(['bash', SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f'train_salm_mtp.sbatch: {message}' in out.stderr, out.stderr
    assert 'srun' not in out.stdout


def test_run_local_two_ranks(espeak_corpus, tmp_path):
    env = {**os.environ, 'NPROC_PER_NODE': '2', 'PYTHON': sys.executable, 'PYTHONWARNINGS': 'ignore',
           'OMP_NUM_THREADS': '1'}
    out = subprocess.run(['bash', 'launch/run_local.sh', '--config', 'configs/tiny_cpu.yaml',
                          '--train-manifest', os.path.join(espeak_corpus, 'train.jsonl'),
                          '--train-iters', '2', '--lr-warmup-iters', '1', '--log-interval', '1',
                          '--eval-interval', '0', '--num-workers', '0', '--log-dir', str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert '--nproc-per-node 2' in out.stderr
    assert [m.groups() for m in LINE.finditer(out.stdout)] == [('1', '2'), ('2', '2')]
    assert [r['iteration'] for r in _metrics(tmp_path) if r['split'] == 'train'] == [1, 2]


@pytest.mark.parametrize('config, world', [('salm_1b_8gpu', 8), ('salm_8b_tp2pp2', 16), ('salm_8b_tp2pp2', 32)])
def test_cluster_configs_parse_and_fit_their_layouts(config, world):
    from megatron_salm_mtp.cli import parse_args

    run = parse_args(['--config', f'{ROOT}/configs/{config}.yaml', '--train-manifest', 'x', '--save', 'ckpt'])
    model, train = run.model, run.train
    model.vocab_size, model.audio_token_id = 151_936, 151_669  # Qwen3's imported table
    model.validate(world)
    train.validate(world // (model.tensor_model_parallel_size * model.pipeline_model_parallel_size))
    assert model.padded_vocab_size == 151_936  # padding as `convert import-hf` writes it
    assert model.bf16 and model.transformer_impl == 'transformer_engine' and model.mtp_num_layers == 2
    assert run.data.tokenizer_type == 'huggingface' and run.data.tokenizer_model is None
