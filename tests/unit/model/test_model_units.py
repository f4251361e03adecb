"""In-process unit tests: configuration errors, splicing, spec choice, MTP input guards."""

import logging

import pytest
import torch

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.model.host_inputs import HEAD_ROW_COUNTS, prepare_microbatch
from megatron_salm_mtp.model.llm import StepInputs
from megatron_salm_mtp.model.mtp import mtp_target_masks
from megatron_salm_mtp.model.provider import provide_salm
from megatron_salm_mtp.model.salm import check_audio_placeholders, splice_audio
from megatron_salm_mtp.model.specs import LOCAL, resolve_transformer_impl
from tests.support.parallel_utils import speech_batch, tiny_config


@pytest.mark.parametrize('changes,world,flag', [
    (dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6, '--tensor-model-parallel-size'),
    (dict(num_attention_heads=6, num_query_groups=6, hidden_size=48, tensor_model_parallel_size=4), 4,
     '--num-attention-heads'),
    (dict(num_query_groups=1, tensor_model_parallel_size=2), 2, '--num-query-groups'),
    (dict(vocab_size=263, make_vocab_size_divisible_by=None, tensor_model_parallel_size=2), 2,
     '--vocab-size'),
    (dict(position_embedding_type='learned_absolute'), 1, '--position-embedding-type'),
    (dict(num_layers=3, pipeline_model_parallel_size=2), 2, '--num-layers'),
    (dict(sequence_parallel=True), 1, '--sequence-parallel'),
    (dict(audio_token_id=999), 1, '--audio-token-id'),
    (dict(mtp_layer_pattern='*E'), 1, '--mtp-layer-pattern'),
    (dict(encoder_conv_kernel_size=4), 1, '--encoder-conv-kernel-size 4 must be odd and >= 3'),
    (dict(encoder_conv_kernel_size=1), 1, '--encoder-conv-kernel-size 1 must be odd and >= 3'),
    (dict(encoder_layer_mix=True), 1, '--encoder-layer-mix mixes encoder layers: --encoder-num-layers 1 gives'),
])
def test_config_errors_name_the_flag(changes, world, flag):
    with pytest.raises(ConfigError, match=flag):
        tiny_config(**changes).validate(world)


def test_valid_config_passes():
    tiny_config(tensor_model_parallel_size=2, pipeline_model_parallel_size=2).validate(8)


def test_vocab_padding_follows_megatron():
    cfg = tiny_config(vocab_size=262, make_vocab_size_divisible_by=128, tensor_model_parallel_size=2)
    assert cfg.padded_vocab_size == 512


def test_splice_places_audio_in_row_major_order():
    tokens = torch.tensor([[1, 9, 9, 2], [9, 9, 9, 3]])
    text = torch.zeros(4, 2, 3)
    audio = torch.arange(2 * 3 * 3, dtype=torch.float).view(2, 3, 3)
    out = splice_audio(text, tokens, audio, torch.tensor([2, 3]), audio_token_id=9)
    assert torch.equal(out[1:3, 0], audio[0, :2])
    assert torch.equal(out[0:3, 1], audio[1])
    assert torch.equal(out[0, 0], torch.zeros(3)) and torch.equal(out[3, 1], torch.zeros(3))


def _splice_by_boolean_masks(text, tokens, audio, lengths, audio_token_id):
    """The obvious splice (boolean-mask indexing, a host round trip on a GPU), as the reference."""
    spliced = text.transpose(0, 1).clone()
    valid = torch.arange(audio.shape[1])[None, :] < lengths[:, None]
    spliced[tokens == audio_token_id] = audio[valid]
    return spliced.transpose(0, 1)


def test_splice_matches_boolean_mask_reference_with_gradients():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 7, 1, 4])  # padded to 7 frames; utterances span rows
    tokens = torch.randint(0, 8, (3, 16), generator=gen)
    places = [(0, 1, 5), (0, 9, 2), (1, 0, 7), (1, 12, 1), (2, 3, 4)]
    for row, start, count in places:
        tokens[row, start:start + count] = 9
    results = []
    for splice in (splice_audio, _splice_by_boolean_masks):
        text = torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
        audio = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
        out = splice(text, tokens, audio, lengths, 9)
        (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        results.append((out.detach(), text.grad, audio.grad))
    for ours, reference in zip(*results):
        assert torch.equal(ours, reference)


def test_placeholder_count_mismatch_is_an_error():
    tokens = torch.tensor([[1, 9, 9, 9, 2]])
    with pytest.raises(ValueError, match='3 audio placeholders but the audio gives 2'):
        check_audio_placeholders(tokens, torch.tensor([2]), 9)
    with pytest.raises(ValueError, match=r'3 audio placeholders but the audio gives 0 .*no audio'):
        check_audio_placeholders(tokens, None, 9)
    check_audio_placeholders(tokens, torch.tensor([1, 2]), 9)


def test_prepare_microbatch_counts_each_heads_rows_and_checks_placeholders():
    cfg = tiny_config()
    batch = speech_batch(cfg, 3, seed=4)
    prepared = prepare_microbatch(batch, cfg)
    masks = [batch['loss_mask']] + mtp_target_masks(batch['loss_mask'], batch['tokens'], cfg.mtp_depths,
                                                    cfg.audio_token_id, cfg.mtp_mask_placeholder_paths)
    assert prepared[HEAD_ROW_COUNTS] == [int(m.nonzero().shape[0]) for m in masks]
    assert len(prepared[HEAD_ROW_COUNTS]) == 1 + cfg.mtp_depths > 1
    assert all(prepared[key] is batch[key] for key in batch)  # no copy of the tensors
    broken = dict(batch, audio_feature_lengths=batch['audio_feature_lengths'] + 8)
    with pytest.raises(ValueError, match='audio placeholders but the audio gives'):
        prepare_microbatch(broken, cfg)


def test_spec_choice_is_logged_and_checked(caplog):
    with caplog.at_level(logging.INFO):
        impl = resolve_transformer_impl(None)
    expected = 'transformer_engine' if torch.cuda.is_available() else 'local'
    assert impl == expected and f'transformer implementation: {expected}' in caplog.text
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='needs Transformer Engine and CUDA'):
            resolve_transformer_impl('transformer_engine')


def test_wgrad_fusion_choice_is_logged(caplog):
    from megatron_salm_mtp.parallel.setup import fuse_wgrad_accumulation_if_asked
    layer = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.INFO):
        fuse_wgrad_accumulation_if_asked(tiny_config(), 'local', layer)
        fuse_wgrad_accumulation_if_asked(tiny_config(gradient_accumulation_fusion=False),
                                         'transformer_engine', layer)
    assert 'gradient accumulation fusion: off (the local spec)' in caplog.text
    assert 'gradient accumulation fusion: off (--no-gradient-accumulation-fusion)' in caplog.text


@pytest.fixture(scope='module')
def single_rank_model(single_rank_parallel):
    """A real SALM on a one-rank gloo group inside this process."""
    from megatron_salm_mtp.parallel.setup import build_model
    cfg = tiny_config()
    return cfg, build_model(cfg, wrap_ddp=False)[0]


def test_mtp_refuses_missing_loss_mask(single_rank_model):
    cfg, model = single_rank_model
    batch = speech_batch(cfg, 2, seed=1)
    model.language_model.set_mtp_loss_weights(torch.ones(2))
    with pytest.raises(ValueError, match='answer-only loss_mask'):
        model(batch['tokens'], batch['position_ids'], labels=batch['labels'], loss_mask=None,
              audio_features=batch['audio_features'],
              audio_feature_lengths=batch['audio_feature_lengths'])


def test_audio_placeholders_without_audio_is_an_error(single_rank_model):
    cfg, model = single_rank_model
    batch = speech_batch(cfg, 1, seed=2)
    with pytest.raises(ValueError, match='audio placeholders but the audio gives 0 tokens'):
        model(batch['tokens'], batch['position_ids'])


def test_host_counted_rows_give_the_device_counted_loss(single_rank_model):
    """The training step's path (rows counted on the host) and the model's own (counted on the
    device) select the same rows: same per-token loss, same MTP statistics."""
    cfg, model = single_rank_model
    batch = prepare_microbatch(speech_batch(cfg, 3, seed=5), cfg)
    model.language_model.set_mtp_loss_weights(torch.ones(cfg.mtp_depths))
    outputs = []
    for counts in (batch[HEAD_ROW_COUNTS], None):
        model.language_model.mtp_stats.reset()
        loss = model(batch['tokens'], batch['position_ids'], labels=batch['labels'],
                     loss_mask=batch['loss_mask'], audio_features=batch['audio_features'],
                     audio_feature_lengths=batch['audio_feature_lengths'], head_row_counts=counts)
        outputs.append((loss.detach(), model.language_model.mtp_stats.values.clone()))
        assert model.language_model._step == StepInputs()  # held for the one call only
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert outputs[0][1][1].min() > 0  # every depth had supervised rows


def test_inference_returns_logits_without_mtp(single_rank_model):
    cfg, model = single_rank_model
    batch = speech_batch(cfg, 2, seed=3)
    logits = model(batch['tokens'], batch['position_ids'], audio_features=batch['audio_features'],
                   audio_feature_lengths=batch['audio_feature_lengths'])
    assert logits.shape == (2, cfg.seq_length, cfg.padded_vocab_size)


def test_pipeline_device_sync_is_off_unless_asked():
    """Core synchronises the device after each batched pipeline exchange by default; the plugin
    leaves it off (a stall per exchange) and --batch-p2p-sync restores it."""
    from megatron_salm_mtp.cli import parse_args
    from megatron_salm_mtp.model.transformer_config import llm_transformer_config
    assert llm_transformer_config(parse_args([]).model).batch_p2p_sync is False
    assert llm_transformer_config(parse_args(['--batch-p2p-sync']).model).batch_p2p_sync is True


@pytest.mark.parametrize('kernel', [0, 5], ids=['whisper', 'conformer'])
def test_audio_padding_leaves_the_encoder_output_unchanged(single_rank_parallel, kernel):
    """--audio-pad-multiple pads audio past its longest: masked (and, with convolution modules,
    zeroed before each convolution), so each utterance encodes the same."""
    torch.manual_seed(0)
    cfg = tiny_config(mtp_num_layers=0, encoder_conv_kernel_size=kernel)
    encoder = provide_salm(cfg, LOCAL).eval().audio_encoder
    frames = torch.tensor([40, 17])
    features = torch.randn(2, cfg.num_mel_bins, 40)
    features[1, :, 17:] = 0.0
    padded = torch.nn.functional.pad(features, (0, 24))
    with torch.no_grad():
        exact, longer = encoder(features, frames), encoder(padded, frames)
    assert longer.shape[1] == 32 and exact.shape[1] == 20
    torch.testing.assert_close(longer[:, :20], exact, rtol=1e-5, atol=1e-6)
    assert not longer[:, 20:].any()


def test_dropout_flags_reach_the_llm_and_the_encoder_while_training_only(single_rank_parallel):
    """--hidden-dropout / --attention-dropout (LLM) and their --encoder-* twins: a training forward
    draws new masks each call, evaluation computes what the same weights give without dropout."""
    batch = speech_batch(tiny_config(mtp_num_layers=0), 2, seed=7)
    inputs = dict(audio_features=batch['audio_features'], audio_feature_lengths=batch['audio_feature_lengths'])
    outputs = {}
    for part, rates in (('llm', dict(hidden_dropout=0.3, attention_dropout=0.3)),
                        ('encoder', dict(encoder_hidden_dropout=0.3, encoder_attention_dropout=0.3)),
                        ('none', {})):
        torch.manual_seed(0)
        model = provide_salm(tiny_config(mtp_num_layers=0, **rates), LOCAL)
        with torch.no_grad():
            model.train()
            first, second = (model(batch['tokens'], batch['position_ids'], **inputs) for _ in range(2))
            model.eval()
            outputs[part] = (first, second, model(batch['tokens'], batch['position_ids'], **inputs))
    for part in ('llm', 'encoder'):
        first, second, evaluated = outputs[part]
        assert not torch.allclose(first, second), part
        torch.testing.assert_close(evaluated, outputs['none'][2], rtol=0, atol=0)
    assert torch.equal(outputs['none'][0], outputs['none'][1])
