"""In-process unit tests: configuration errors, splicing, spec choice, MTP input guards."""

import logging

import pytest
import torch

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.model.salm import splice_audio
from megatron_salm_mtp.model.specs import resolve_transformer_impl
from parallel_utils import speech_batch, tiny_config


@pytest.mark.parametrize('changes,world,flag', [
    (dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6, '--tensor-model-parallel-size'),
    (dict(num_attention_heads=6, num_query_groups=6, hidden_size=48, tensor_model_parallel_size=4), 4, '--num-attention-heads'),
    (dict(num_query_groups=1, tensor_model_parallel_size=2), 2, '--num-query-groups'),
    (dict(vocab_size=263, make_vocab_size_divisible_by=None, tensor_model_parallel_size=2), 2,
     '--vocab-size'),
    (dict(position_embedding_type='learned_absolute'), 1, '--position-embedding-type'),
    (dict(num_layers=3, pipeline_model_parallel_size=2), 2, '--num-layers'),
    (dict(sequence_parallel=True), 1, '--sequence-parallel'),
    (dict(audio_token_id=999), 1, '--audio-token-id'),
    (dict(mtp_layer_pattern='*E'), 1, '--mtp-layer-pattern'),
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


def test_splice_frame_count_mismatch_is_an_error():
    tokens = torch.tensor([[1, 9, 9, 9, 2]])
    with pytest.raises(ValueError, match='3 audio placeholders but the audio gives 2'):
        splice_audio(torch.zeros(5, 1, 3), tokens, torch.zeros(1, 4, 3), torch.tensor([2]), 9)


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
    with pytest.raises(ValueError, match='no audio_features'):
        model(batch['tokens'], batch['position_ids'])


def test_inference_returns_logits_without_mtp(single_rank_model):
    cfg, model = single_rank_model
    batch = speech_batch(cfg, 2, seed=3)
    logits = model(batch['tokens'], batch['position_ids'], audio_features=batch['audio_features'],
                   audio_feature_lengths=batch['audio_feature_lengths'])
    assert logits.shape == (2, cfg.seq_length, cfg.padded_vocab_size)
