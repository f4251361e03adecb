"""Packed sequences on the data side: first-fit rows, the packed batch contract checked against the
padded one utterance by utterance, epochs, DP shares, resume and bad input."""

import os

import numpy as np
import pytest
import torch

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.data.batching import Collator
from megatron_salm_mtp.data.length_mix import draw_durations, packed_microbatches, padded_microbatches, utterances
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader, build_dataset
from megatron_salm_mtp.data.packing import PACKED_BATCH_KEYS, PackedCollator, PackedRows, first_fit_rows, segment_ids
from tests.support.data_fixtures import make_corpus


def test_first_fit_rows_cover_everything_within_capacity():
    lengths = np.random.default_rng(0).integers(5, 60, size=500)
    rows = first_fit_rows(lengths, 100, window=50, seed=1)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(500))
    used = [int(lengths[row].sum()) for row in rows]
    assert max(used) <= 100
    # first-fit never leaves two rows of one window half empty (the later one would have fit)
    by_window = {}
    order = np.random.default_rng([1, 0x9ac4]).permutation(500)
    window_of = {int(i): k // 50 for k, i in enumerate(order)}
    for row, u in zip(rows, used):
        by_window.setdefault(window_of[row[0]], []).append(u)
        assert len({window_of[i] for i in row}) == 1  # rows stay inside their window
    assert all(sum(u <= 50 for u in us) <= 1 for us in by_window.values())
    assert len(rows) < 500 * 32 / 100 * 1.15  # about as few rows as the tokens need
    assert first_fit_rows(lengths, 100, 50, seed=1) == rows
    assert first_fit_rows(lengths, 100, 50, seed=2) != rows
    with pytest.raises(ValueError, match='exceeds the row'):
        first_fit_rows([101], 100, 10, 0)


def cfg(**kw):
    base = dict(seq_length=96, micro_batch_size=2, global_batch_size=4, seed=3, default_prompt=None,
                pack_sequences=True, pack_window=8)
    return DataConfig(**{**base, **kw})


def test_packed_batch_holds_each_utterance_as_the_padded_batch_does(tmp_path):
    manifest = make_corpus(tmp_path, n=12, seconds=(0.5, 1.5))
    ds = build_dataset(cfg(), [manifest])
    packed = PackedRows(ds, window=12, seed=0)
    assert len(packed) < len(ds)  # several utterances share a row
    rows = [packed[r] for r in range(len(packed))]
    batch = PackedCollator(ds.tokenizer.pad_id, 96)(rows)
    assert tuple(batch) == PACKED_BATCH_KEYS and batch['tokens'].shape == (len(packed), 96)
    pad = Collator(ds.tokenizer.pad_id, 96)
    features, lengths, n_audio = batch['audio_features'], batch['audio_feature_lengths'], 0
    segments = segment_ids(batch['cu_seqlens'], 96)
    for r, row in enumerate(packed.rows):
        starts = batch['cu_seqlens'][r].tolist()
        for u, index in enumerate(row):
            alone = pad([ds[index]])
            at, n = starts[u], starts[u + 1] - starts[u]
            assert n == ds.lengths[index] - 1
            for key in ('tokens', 'labels', 'loss_mask', 'position_ids'):
                assert torch.equal(batch[key][r, at:at + n], alone[key][0, :n]), key
            assert (alone['loss_mask'][0, n:] == 0).all()  # nothing supervised is left behind
            assert (segments[r, at:at + n] == u).all()
            t = int(alone['audio_feature_lengths'][0])
            assert int(lengths[n_audio]) == t
            assert torch.equal(features[n_audio, :, :t], alone['audio_features'][0, :, :t])
            n_audio += 1
        end = starts[len(row)]
        assert end == 96 or torch.equal(batch['position_ids'][r, end:], torch.arange(96 - end))
        assert (batch['loss_mask'][r, end:] == 0).all()
    assert n_audio == len(ds) == features.shape[0]


def test_epochs_cover_every_utterance_once_and_ranks_split_the_rows(tmp_path):
    manifest = make_corpus(tmp_path, n=24, seconds=(0.5, 1.5))
    ranks = [build_dataloader(cfg(), manifest, dp_rank=r, dp_size=2) for r in range(2)]
    rows = ranks[0].dataset.rows
    assert len(rows) >= 4
    seen = [[tuple(b['cu_seqlens'].shape) for b in loader] for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == len(rows) // 4  # one microbatch of 2 rows per rank per step
    order = ranks[0].sampler.epoch_order(0)
    kept = {i for r in order for i in rows[r]}
    assert len({i for row in rows for i in row}) == 24
    assert len(kept) == sum(len(rows[r]) for r in order)  # no utterance twice in an epoch
    assert ranks[0].consumed_samples == ranks[1].consumed_samples == len(order)


def test_resume_mid_epoch_sees_the_same_rows(tmp_path):
    """Also with prefetching workers (the loader counts rows delivered, not rows loaded)."""
    manifest = make_corpus(tmp_path, n=30, seconds=(0.5, 1.5))
    ref = build_dataloader(cfg(), manifest)
    uninterrupted = [b for _ in range(2) for b in ref]
    first = build_dataloader(cfg(num_workers=2), manifest)
    it = iter(first)
    got = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state['consumed_samples'] == 6  # rows
    del it, first
    resumed = build_dataloader(cfg(num_workers=2), manifest)
    resumed.load_state_dict(state)
    got += list(resumed) + list(resumed)
    assert len(got) == len(uninterrupted)
    for a, b in zip(got, uninterrupted):
        assert all(torch.equal(a[k], b[k]) for k in a)


def supervised_segments(batch) -> int:
    segments = segment_ids(batch['cu_seqlens'], batch['tokens'].shape[1])
    return sum(len(set(seg[mask > 0].tolist())) for seg, mask in zip(segments, batch['loss_mask']))


def test_an_utterance_lost_after_the_prescan_leaves_its_row_whole(tmp_path, caplog):
    manifest = make_corpus(tmp_path, n=16, seconds=(0.5, 1.5))
    loader = build_dataloader(cfg(global_batch_size=2), manifest, shuffle=False)
    rows = loader.dataset.rows
    victim_row = next(r for r, row in enumerate(rows) if len(row) > 1)
    victim = rows[victim_row][0]
    os.remove(tmp_path / 'wav' / f'{victim:03d}.wav')
    batches = list(loader)
    assert all(b['tokens'].shape == (2, 96) for b in batches)
    assert loader.consumed_samples == loader.sampler.samples_per_epoch
    assert loader.epoch_skip_counts[0] == {'missing_file': 1}
    delivered = sum(supervised_segments(b) for b in batches)  # every answer is supervised
    order = loader.sampler.epoch_order(0)
    assert delivered == sum(len(rows[r]) for r in order) - 1
    assert 'missing_file' in caplog.text


def test_flag_checks():
    with pytest.raises(ValueError, match='--pack-sequences .the default. needs --prescan'):
        cfg(prescan=False)
    with pytest.raises(ValueError, match='--bucket-window 2 sorts unpacked rows'):
        cfg(bucket_window=2)
    with pytest.raises(ValueError, match='--no-pad-to-seq-length pads unpacked rows'):
        cfg(pad_to_seq_length=False)
    with pytest.raises(ValueError, match='--pack-window'):
        cfg(pack_window=0)
    assert not cfg(pack_sequences=False, prescan=False, bucket_window=2, pad_to_seq_length=False).pack_sequences


def test_too_few_rows_for_a_global_batch_name_the_flags(tmp_path):
    manifest = make_corpus(tmp_path, n=6, seconds=(0.5, 0.8))
    with pytest.raises(ValueError, match=r'packed rows \(of 6 utterances\) cannot fill one global batch of 8: '
                                         r'.*lower it or add --no-pack-sequences'):
        build_dataloader(cfg(global_batch_size=8, micro_batch_size=4), manifest)


def test_validation_keeps_one_utterance_per_row(tmp_path):
    """What the trainer builds its validation loader from: a set too small to fill a global batch of
    packed rows still fills one of utterances, and its batches are the unpacked ones."""
    manifest = make_corpus(tmp_path, n=8, seconds=(0.5, 0.8))
    with pytest.raises(ValueError, match='cannot fill one global batch of 8'):
        build_dataloader(cfg(global_batch_size=8, micro_batch_size=4), manifest)
    batches = list(build_dataloader(cfg(global_batch_size=8, micro_batch_size=4).for_evaluation(), manifest))
    assert len(batches) == 2 and all('cu_seqlens' not in b and b['tokens'].shape == (4, 96) for b in batches)


def test_packing_is_the_training_default_and_turns_off():
    assert parse_args(['--train-manifest', 'x.jsonl']).data.pack_sequences
    assert not parse_args(['--train-manifest', 'x.jsonl', '--no-pack-sequences']).data.pack_sequences


def test_an_utterance_longer_than_measured_is_left_out_of_its_row(tmp_path, caplog):
    manifest = make_corpus(tmp_path, n=6, seconds=(1.0, 1.2))
    ds = build_dataset(cfg(), [manifest])
    real = list(ds.lengths)
    ds.lengths = [n // 3 for n in real]  # as if every file had grown since the prescan
    packed = PackedRows(ds, window=6, seed=0)
    row = max(range(len(packed)), key=lambda r: len(packed.rows[r]))
    loaded = packed[row]
    used = sum(len(x['ids']) - 1 for x in loaded['samples'])
    assert loaded['skipped'] and used <= 96
    assert len(loaded['samples']) + len(loaded['skipped']) == len(packed.rows[row])
    assert {s.reason for s in loaded['skipped']} == {'sequence_too_long'}
    assert 'no longer fits its packed row' in caplog.text
    PackedCollator(ds.tokenizer.pad_id, 96)([loaded])  # the row still collates


def test_resume_refuses_a_position_in_other_rows(tmp_path):
    manifest = make_corpus(tmp_path, n=30, seconds=(0.5, 1.5))
    state = build_dataloader(cfg(), manifest).state_dict()
    assert set(state) == {'consumed_samples', 'epoch', 'seed', 'packed_rows'}
    build_dataloader(cfg(), manifest).load_state_dict(state)  # same rows: fine
    with pytest.raises(ValueError, match='counts packed rows, this run other packed rows'):
        build_dataloader(cfg(pack_window=4), manifest).load_state_dict(state)
    with pytest.raises(ValueError, match='counts packed rows, this run utterances'):
        build_dataloader(cfg(pack_sequences=False), manifest).load_state_dict(state)
    unpacked = build_dataloader(cfg(pack_sequences=False), manifest).state_dict()
    with pytest.raises(ValueError, match='counts utterances, this run packed rows'):
        build_dataloader(cfg(), manifest).load_state_dict(unpacked)


def test_length_mix_is_read_speech_like_and_packs_the_same_utterances():
    """The benchmark's length mix (data/length_mix.py): long-tailed durations of 1-30 s, answers
    of matching length, and both layouts built from the same utterances by the real collators."""
    seconds = draw_durations(4000, 30.0, seed=0)
    assert seconds.min() >= 1.0 and seconds.max() <= 30.0
    assert 7.0 < np.median(seconds) < 9.0 and 0.01 < (seconds > 25).mean() < 0.06  # a long tail
    samples, dropped = utterances(8, 1024, 30.0, vocab_size=500, audio_token_id=499, n_mels=4, stack=4, seed=1)
    assert dropped == 0 and len(samples) > 8
    for u in samples:
        duration = u['features'][0].shape[1] / 100  # 10 ms mel frames
        answer = int(u['supervised'].sum()) - 1  # less the EOS
        assert 0.8 * 3.5 * duration - 1 <= answer <= 1.2 * 3.5 * duration + 1
    padded, useful_padded = padded_microbatches(samples, 8, 4, 1024, 0, 4)
    packed, useful_packed = packed_microbatches(samples, 8, 4, 1024, 0, 4, window=1000, seed=1)
    assert [tuple(b['tokens'].shape) for b in padded + packed] == [(4, 1024)] * 4
    assert useful_padded == sum(len(u['ids']) - 1 for u in samples[:8])
    tails = 0  # a row's last segment is its padding tail if it holds no audio (every utterance does)
    for b in packed:
        for tokens, segments in zip(b['tokens'], segment_ids(b['cu_seqlens'], 1024)):
            last = segments == segments[-1]
            tails += 0 if (tokens[last] == 499).any() else int(last.sum())
    assert useful_packed == 8 * 1024 - tails > 0.9 * 8 * 1024  # every position but the padding tails
    assert useful_packed > 3 * useful_padded  # the mix is mostly padding one to a row
    assert sum(b['audio_features'].shape[0] for b in packed) > 3 * 8
