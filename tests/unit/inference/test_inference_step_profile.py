"""What one decoding step runs (inference/step_profile.py on tiny SALMs, CPU): no host read inside a
step (a CUDA graph could not capture one) and one between steps; every step, the first included,
goes through the workspace (graph-replayable); the drafter runs D+1 positions per depth and the
verify forward is greedy's forward at the same width."""

import pytest

from megatron_salm_mtp.inference.decode import greedy_decode, speculative_decode
from megatron_salm_mtp.inference.step_profile import profile_steps
from tests.support.inference_fixtures import EOS_ID, random_prompts, tiny_salm

DEPTHS = 3


@pytest.fixture(scope='module')
def model(single_rank_parallel):
    return tiny_salm(seed=41)


def profiled(decode):
    """(decode's stats, step profile)."""
    result = {}
    profile = profile_steps(lambda: result.setdefault('stats', decode()[1]), 'cpu')
    return result['stats'], profile


@pytest.mark.parametrize('rows', [1, 3])
def test_steps_read_the_device_once_and_draft_over_d_plus_1_positions(model, rows):
    batch = random_prompts(model.cfg, [30, 57, 41][:rows], seed=42)
    vocab = model.cfg.vocab_size
    greedy_stats, greedy = profiled(lambda: greedy_decode(model, batch, 10, [EOS_ID], vocab, width=DEPTHS + 1))
    stats, speculative = profiled(lambda: speculative_decode(model, batch, 10, [EOS_ID], vocab, DEPTHS))
    for steps, profile in ((greedy_stats, greedy), (stats, speculative)):
        assert profile['steps'] == max(s.verify_steps for s in steps) > 1
        assert profile['host_reads_in_step'] == 0
        assert profile['host_reads_between_steps'] == 1
    assert speculative['ops']['trunk'] == greedy['ops']['trunk']
    assert speculative['flops']['trunk'] == greedy['flops']['trunk']
    # An MTP layer is eh_proj and a layer shaped as the trunk's: over as many positions as the
    # verify forward (D+1), its FLOPs (GEMMs, attention over the same cache length) are a trunk
    # layer's plus eh_proj's.
    lm = model.language_model
    trunk_layer = speculative['flops']['trunk'] / len(lm.decoder.layers)
    eh_proj = 2 * lm.mtp.layers[0].eh_proj.weight.numel() * (DEPTHS + 1) * rows
    for depth in range(1, DEPTHS + 1):
        assert speculative['ops'][f'mtp depth {depth}'] == speculative['ops']['mtp depth 1']
        assert speculative['flops'][f'mtp depth {depth}'] == trunk_layer + eh_proj, depth


def test_bad_budget_and_stop_ids_are_refused(model):
    batch = random_prompts(model.cfg, [30], seed=43)
    vocab = model.cfg.vocab_size
    with pytest.raises(ValueError, match='max_new_tokens 0'):
        greedy_decode(model, batch, 0, [EOS_ID], vocab)
    with pytest.raises(ValueError, match=r'stop ids \[99999\] outside the vocabulary'):
        speculative_decode(model, batch, 4, [EOS_ID, 99999], vocab, 2)
