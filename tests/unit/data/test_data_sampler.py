"""DP-sharded sampler: global-batch consistency, per-epoch reshuffle, exact resume, bucketing."""

import itertools

import numpy as np
import pytest
import torch

from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
from megatron_salm_mtp.data.sampler import DistributedMicroBatchSampler as Sampler
from tests.support.data_fixtures import make_corpus


def steps(n, gb, mbs, dp, epochs=1, **kw):
    """Per step: list over ranks of the rank's microbatches."""
    samplers = [Sampler(n, gb, mbs, r, dp, **kw) for r in range(dp)]
    per_rank = [[mb for _ in range(epochs) for mb in s] for s in samplers]
    k = gb // (mbs * dp)
    return [[per_rank[r][i:i + k] for r in range(dp)] for i in range(0, len(per_rank[0]), k)]


def test_every_rank_gets_its_share_each_step():
    for step in steps(43, 12, 2, 3):
        assert all(len(mbs) == 2 and all(len(mb) == 2 for mb in mbs) for mbs in step)
        flat = [i for mbs in step for mb in mbs for i in mb]
        assert len(flat) == len(set(flat)) == 12


def test_global_batch_is_the_same_at_any_dp_size():
    ref = [sorted(i for r in s for mb in r for i in mb) for s in steps(50, 8, 1, 1, epochs=2)]
    for mbs, dp in [(2, 2), (1, 4), (4, 2), (1, 8)]:
        got = [sorted(i for r in s for mb in r for i in mb) for s in steps(50, 8, mbs, dp, epochs=2)]
        assert got == ref


def test_epochs_reshuffle_and_seed_matters():
    s = Sampler(40, 8, 2, seed=5)
    e0, e1 = list(s), list(s)
    assert len(e0) == len(e1) == 20 and s.epoch == 2
    assert sorted(itertools.chain(*e0)) == sorted(itertools.chain(*e1)) == list(range(40))
    assert e0 != e1
    assert list(Sampler(40, 8, 2, seed=5)) == e0 and list(Sampler(40, 8, 2, seed=6)) != e0
    assert len(list(Sampler(45, 8, 2))) == 20  # the 5 that do not fill a global batch wait for another epoch


@pytest.mark.parametrize('stop_after', [3, 8, 10, 27])  # mid-step, epoch end, next epoch, 4th epoch
def test_resume_sees_the_same_next_batches(stop_after):
    kw = dict(num_samples=37, global_batch_size=8, micro_batch_size=2, dp_rank=1, dp_size=2, seed=9)
    full = Sampler(**kw)
    uninterrupted = [mb for _ in range(4) for mb in full]  # 4 epochs x 8 microbatches
    first = Sampler(**kw)
    it = iter(first)
    seen = []
    while len(seen) < stop_after:
        try:
            seen.append(next(it))
        except StopIteration:
            it = iter(first)
    state = first.state_dict()
    assert state['consumed_samples'] == stop_after * 2 * 2
    resumed = Sampler(**kw)
    resumed.load_state_dict(state)
    rest = []
    while len(seen) + len(rest) < len(uninterrupted):
        rest.extend(resumed)
    assert seen + rest[: len(uninterrupted) - len(seen)] == uninterrupted


def test_bucketing_groups_lengths_and_keeps_the_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 300, size=96)
    plain = Sampler(96, 8, 2, shuffle=True, seed=1)
    bucketed = Sampler(96, 8, 2, shuffle=True, seed=1, lengths=lengths, bucket_window=4)
    mb_plain, mb_bucket = list(plain), list(bucketed)
    assert sorted(itertools.chain(*mb_bucket)) == sorted(itertools.chain(*mb_plain)) == list(range(96))

    def spread(mbs):
        return np.mean([lengths[mb].max() - lengths[mb].min() for mb in mbs])
    assert spread(mb_bucket) < 0.25 * spread(mb_plain)
    with pytest.raises(ValueError, match='lengths'):
        Sampler(96, 8, 2, bucket_window=2)


def test_bad_configurations():
    with pytest.raises(ValueError, match='multiple of'):
        Sampler(100, 10, 4, 0, 1)
    with pytest.raises(ValueError, match='dp_rank'):
        Sampler(100, 8, 2, 2, 2)
    with pytest.raises(ValueError, match='cannot fill'):
        Sampler(7, 8, 2)


def test_loader_resume_with_workers(tmp_path):
    """A prefetching 2-worker loader, checkpointed mid-epoch, resumes on the exact next batch."""
    manifest = make_corpus(tmp_path, n=20, seconds=(1.0, 1.6))
    cfg = DataConfig(seq_length=96, micro_batch_size=2, global_batch_size=4, num_workers=2, seed=3, default_prompt=None,
                     pack_sequences=False)  # one utterance per row (packed rows: tests/unit/data/test_data_packing.py)
    ref = build_dataloader(cfg, manifest, dp_rank=1, dp_size=2)
    uninterrupted = [b for _ in range(2) for b in ref]  # 2 epochs x 5 microbatches
    assert len(uninterrupted) == 10
    first = build_dataloader(cfg, manifest, dp_rank=1, dp_size=2)
    it = iter(first)
    got = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {'consumed_samples': 12, 'epoch': 0, 'seed': 3}
    del it, first
    resumed = build_dataloader(cfg, manifest, dp_rank=1, dp_size=2)
    resumed.load_state_dict(state)
    got += list(resumed) + list(resumed)
    assert len(got) == 10
    for a, b in zip(got, uninterrupted):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_abandoned_iterator_does_not_lose_prefetched_batches(tmp_path):
    """Workers prefetch ahead; starting a new iteration resumes at the first batch not delivered."""
    manifest = make_corpus(tmp_path, n=12, seconds=(1.0, 1.2))
    cfg = DataConfig(seq_length=96, micro_batch_size=2, global_batch_size=4, num_workers=2, default_prompt=None,
                     pack_sequences=False)
    ref = list(build_dataloader(cfg, manifest))
    loader = build_dataloader(cfg, manifest)
    it = iter(loader)
    got = [next(it), next(it), next(it)]
    got += list(loader)
    assert len(got) == len(ref) == 6
    assert all(torch.equal(a['tokens'], b['tokens']) for a, b in zip(got, ref))


@pytest.mark.parametrize('kw,message', [({'n_mels': 64}, 'n-mels'), ({'stack': 0}, 'stack'),
                                        ({'prompt_template': 'chatml'}, 'prompt-template'),
                                        ({'max_duration': 0}, 'max-duration')])
def test_data_config_names_the_bad_setting(kw, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kw)
