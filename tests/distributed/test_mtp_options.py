"""MTP options of NeMo's speech models: shared-weight depths and the MTP layer composition, each
under TP=2 and PP=2 against the plain-torch reference; ``mtp_enabled`` and 'no MTP at all'."""


import pytest
import torch

from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)

OPTIONS = {
    'shared-weights': dict(mtp_use_repeated_layer=True, mtp_num_layers=3),
    'attention-only': dict(mtp_layer_pattern='*'),
}


@pytest.mark.parametrize('option', sorted(OPTIONS))
def test_option_matches_reference_under_tp2_and_pp2(option, tmp_path):
    cfg = tiny_config(**OPTIONS[option])
    weights = init_weights(cfg, str(tmp_path))
    if cfg.mtp_use_repeated_layer:  # the checkpoint holds one layer for all depths
        assert not any(k.startswith('language_model.mtp.layers.1.') for k in weights)
    batch = speech_batch(cfg, 4, seed=21)
    torch.save(batch, tmp_path / 'batch.pt')
    _, totals, expected = reference_grads(cfg, weights, batch)
    for tp, pp in ((2, 1), (1, 2)):
        layout = cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        _, grads, _, ranks = run_layout(layout, str(tmp_path / 'weights.pt'), str(tmp_path / 'batch.pt'),
                                        str(tmp_path / f'tp{tp}pp{pp}'), nproc=2, microbatches=2)
        assert_grads_match(expected, grads)
        last = [r for r in ranks if r['metrics']][0]['metrics']
        assert set(k for k in last if k.endswith('loss')) == {f'mtp_{k} loss' for k in range(1, cfg.mtp_depths + 1)}


def test_mtp_enabled_and_disabled_model(single_rank_salm):
    build = single_rank_salm
    with_mtp = build(tiny_config(mtp_num_layers=2))
    assert with_mtp.mtp_enabled and with_mtp.has_mtp_layers
    without = build(tiny_config(mtp_num_layers=None))
    assert not without.mtp_enabled and not without.has_mtp_layers
    assert not [k for k in without.state_dict() if 'mtp' in k]
    assert not [k for k in without.sharded_state_dict() if 'mtp' in k]
    assert [k for k in with_mtp.state_dict() if '.mtp.layers.1.' in k]


@pytest.fixture(scope='module')
def single_rank_salm(single_rank_parallel):
    from megatron_salm_mtp.model.salm import SALM
    return lambda cfg: SALM(cfg, 'local')


def test_detached_trunk_trains_as_without_mtp_under_tp2_and_pp2(tmp_path):
    """--mtp-detach-trunk: every parameter outside MTP gets the gradient of the model without MTP,
    and the MTP layers the gradient they get in joint training (detaching is upstream of them)."""
    cfg = tiny_config(mtp_num_layers=2, mtp_detach_trunk=True)
    weights = init_weights(cfg, str(tmp_path))
    batch = speech_batch(cfg, 4, seed=5)
    torch.save(batch, tmp_path / 'batch.pt')
    trunk_weights = {k: v for k, v in weights.items() if '.mtp.' not in k}
    _, _, without_mtp = reference_grads(cfg.replace(mtp_num_layers=None, mtp_detach_trunk=False),
                                        trunk_weights, batch)
    _, _, joint = reference_grads(cfg.replace(mtp_detach_trunk=False), weights, batch)
    expected = {k: (joint[k] if '.mtp.' in k else without_mtp[k]) for k in joint}
    assert any(not torch.allclose(joint[k], without_mtp[k]) for k in without_mtp)  # MTP does reach the trunk
    for tp, pp in ((2, 1), (1, 2)):
        layout = cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        _, grads, copies, _ = run_layout(layout, str(tmp_path / 'weights.pt'), str(tmp_path / 'batch.pt'),
                                         str(tmp_path / f'tp{tp}pp{pp}'), nproc=2, microbatches=2)
        assert_grads_match(expected, grads)
        for name, copy in copies.items():
            torch.testing.assert_close(copy, grads[name], rtol=0, atol=0)
