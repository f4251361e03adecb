"""The benchmark command runs the real loading path and reports sane throughput figures."""

import subprocess

from megatron_salm_mtp.tools import bench_data as bench
from tests.support.data_fixtures import make_corpus
from tests.support.process import ROOT, preimported_python


def test_bench_run(tmp_path):
    manifest = make_corpus(tmp_path, n=24, seconds=(1.0, 2.0))
    r = bench.run(manifest, num_workers=0, micro_batch_size=4)
    assert r['utterances'] == 20  # the first batch is excluded (start-up)
    assert abs(r['audio_seconds'] - 20 * 1.5) < 3 and r['utt_per_s'] > 0
    assert r['utt_per_s_per_worker'] == r['utt_per_s']


def test_bench_cli_with_workers(tmp_path):
    manifest = make_corpus(tmp_path, n=16, seconds=(1.0, 1.2))
    out = subprocess.run([*preimported_python(), '-m', 'megatron_salm_mtp.tools.bench_data', '--manifest', manifest,
                          '--num-workers', '2', '--micro-batch-size', '4'], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert 'utt/s' in out and 'audio-s/s' in out and 'with 2 workers' in out
