"""SpecAugment: the masks themselves; and in the loader, SpecAugment and VTLP alike: training
only, a function of (seed, epoch, sample) - the same with or without workers and after a resume -
and a new draw each epoch."""

import numpy as np
import pytest
import torch

from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
from megatron_salm_mtp.data.spec_augment import SpecAugment
from tests.support.data_fixtures import make_corpus

AUGMENT = dict(spec_augment_freq_masks=2, spec_augment_freq_width=12, spec_augment_time_masks=3,
               spec_augment_time_width=0.1)
AUGMENTATIONS = {'spec_augment': AUGMENT, 'vtlp': dict(vtlp_max_warp=0.1)}


def _masked_rows_and_columns(original: torch.Tensor, masked: torch.Tensor):
    changed = original != masked
    return changed.all(dim=1).nonzero().flatten().tolist(), changed.all(dim=0).nonzero().flatten().tolist()


def test_masks_are_bands_of_bounded_width_filled_with_the_mean():
    features = torch.randn(80, 300, generator=torch.Generator().manual_seed(0))
    augment = SpecAugment(freq_masks=2, freq_width=12, time_masks=3, time_width=0.1)
    masked = augment(features, augment.generator(seed=1, epoch=0, index=5))
    changed = masked != features
    assert changed.any()
    fill = features.mean()
    assert torch.allclose(masked[changed], fill.expand(int(changed.sum())))
    rows, columns = _masked_rows_and_columns(features, masked)
    assert 0 < len(rows) <= 2 * 12 and 0 < len(columns) <= 3 * 30
    # Every changed entry lies in a fully masked row or column (masks are whole bands).
    band = torch.zeros_like(changed)
    band[rows, :] = True
    band[:, columns] = True
    assert not (changed & ~band).any()


def test_the_draw_is_a_function_of_seed_epoch_and_index():
    features = torch.randn(80, 200, generator=torch.Generator().manual_seed(1))
    augment = SpecAugment(freq_masks=2, freq_width=20, time_masks=2, time_width=0.2)

    def draw(seed, epoch, index):
        return augment(features, augment.generator(seed, epoch, index))

    torch.testing.assert_close(draw(3, 1, 7), draw(3, 1, 7), rtol=0, atol=0)
    for other in ((4, 1, 7), (3, 2, 7), (3, 1, 8)):
        assert not torch.equal(draw(3, 1, 7), draw(*other))


def test_disabled_and_bad_settings():
    features = torch.randn(80, 50)
    assert not SpecAugment().enabled
    assert torch.equal(SpecAugment()(features, np.random.default_rng(0)), features)
    with pytest.raises(ValueError, match='--spec-augment-time-width'):
        DataConfig(spec_augment_time_masks=2, spec_augment_time_width=5)
    with pytest.raises(ValueError, match='--spec-augment-freq-width'):
        DataConfig(spec_augment_freq_width=81)
    with pytest.raises(ValueError, match='--spec-augment-freq-masks'):
        DataConfig(spec_augment_freq_masks=-1)


def _features(loader, steps):
    """Features of the next ``steps`` microbatches, across epochs."""
    out = []
    while len(out) < steps:
        for batch in loader:
            out.append(batch['audio_features'])
            if len(out) == steps:
                break
    return out


@pytest.fixture
def manifest(tmp_path):
    return make_corpus(tmp_path, n=8)


@pytest.fixture(params=sorted(AUGMENTATIONS))
def augmentation(request):
    return AUGMENTATIONS[request.param]


def _config(augmentation, **overrides):
    return DataConfig(**{**dict(seq_length=128, micro_batch_size=2, global_batch_size=4, seed=11,
                                **augmentation), **overrides})


def test_only_training_loaders_augment(manifest, augmentation):
    plain = _features(build_dataloader(_config(augmentation), manifest, shuffle=False), 2)
    validation = _features(build_dataloader(_config(augmentation), manifest, shuffle=False, augment=False), 2)
    augmented = _features(build_dataloader(_config(augmentation), manifest, shuffle=False, augment=True), 2)
    assert all(torch.equal(a, b) for a, b in zip(plain, validation))
    assert not any(torch.equal(a, b) for a, b in zip(plain, augmented))


def test_augmentation_is_the_same_with_workers_and_after_a_resume(manifest, augmentation):
    reference = _features(build_dataloader(_config(augmentation), manifest, augment=True), 6)  # 1.5 epochs
    with_workers = _features(build_dataloader(_config(augmentation, num_workers=2), manifest, augment=True), 6)
    for a, b in zip(reference, with_workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    first = build_dataloader(_config(augmentation), manifest, augment=True)
    _features(first, 3)
    resumed = build_dataloader(_config(augmentation), manifest, augment=True)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(reference[3:], _features(resumed, 3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_each_epoch_draws_anew(manifest, augmentation):
    """Unshuffled, epoch 2 sees the same utterances in the same order: only the draws differ."""
    loader = build_dataloader(_config(augmentation), manifest, shuffle=False, augment=True)
    first, second = _features(loader, 4), _features(loader, 4)
    assert not any(torch.equal(a, b) for a, b in zip(first, second))
