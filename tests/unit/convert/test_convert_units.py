"""In-process checks of the convert pieces: vocabulary sizing against a tokenizer, sliced reads
of padded tables and TP shards, the errors that name what cannot be imported, and the export's
copy of the model with its progress lines."""

import json
import os
import shutil

import pytest
import torch

from megatron_salm_mtp.config import ConfigError, SALMConfig
from megatron_salm_mtp.convert import export
from megatron_salm_mtp.convert.load import salm_config_from_hf, tokenizer_vocabulary
from megatron_salm_mtp.convert.recipes import Copy, FusedQKV, GatedFC1
from megatron_salm_mtp.convert.source import TensorSource


def _word_tokenizer(folder, words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f'w{i}': i for i in range(words - 1)}
    vocab['[UNK]'] = words - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, 'tokenizer.json'))


def test_vocabulary_follows_the_tokenizer(tmp_path):
    _word_tokenizer(tmp_path / 'small', 100)  # fits the table: rows kept
    small = tokenizer_vocabulary(str(tmp_path / 'small'), 272)
    assert small['vocab_size'] == 272 and 100 <= small['audio_token_id'] < 272
    _word_tokenizer(tmp_path / 'big', 300)  # 300 + virtual specials > 272 rows: grow to 384
    big = tokenizer_vocabulary(str(tmp_path / 'big'), 272)
    assert big['vocab_size'] == 384 and big['audio_token_id'] >= 300
    assert tokenizer_vocabulary(str(tmp_path), 272) == {'vocab_size': 272, 'audio_token_id': 271}


def test_grown_table_reads_zero_rows_per_shard(hf_models, tmp_path):
    src = TensorSource(hf_models['qwen3'])
    table = src.get('model.embed_tokens.weight')
    recipe = Copy('model.embed_tokens.weight', rows=384)
    shards = [recipe.shard(src, 0, r, 2) for r in range(2)]
    assert shards[0].shape == (192, 32) and torch.equal(shards[0], table[:192])
    assert torch.equal(shards[1][:80], table[192:]) and not shards[1][80:].any()
    assert torch.equal(torch.cat(shards), recipe.full(src))


def test_shards_concatenate_to_the_full_tensor(hf_models):
    src = TensorSource(hf_models['qwen2'])
    a = 'model.layers.0.self_attn.'
    for recipe in (FusedQKV(a + 'q_proj.weight', a + 'k_proj.weight', a + 'v_proj.weight', 4, 2, 8),
                   FusedQKV(a + 'q_proj.bias', a + 'k_proj.bias', a + 'v_proj.bias', 4, 2, 8, bias=True),
                   Copy(a + 'o_proj.weight')):
        dim = 1 if isinstance(recipe, Copy) else 0
        assert torch.equal(torch.cat([recipe.shard(src, dim, r, 2) for r in range(2)], dim), recipe.full(src))
    fc1 = GatedFC1('model.layers.0.mlp.gate_proj.weight', 'model.layers.0.mlp.up_proj.weight')
    gate, up = fc1.full(src).chunk(2)
    assert torch.equal(fc1.shard(src, 0, 1, 2), torch.cat([gate[24:], up[24:]]))


def test_config_from_hf(hf_models):
    qwen3 = salm_config_from_hf(hf_models['qwen3'], hf_models['whisper'])
    assert (qwen3.qk_layernorm, qwen3.kv_channels, qwen3.untie_embeddings_and_output_weights) == (True, 16, False)
    assert (qwen3.num_mel_bins, qwen3.encoder_max_source_positions, qwen3.mtp_num_layers) == (16, 16, None)
    qwen2 = salm_config_from_hf(hf_models['qwen2'], mtp_num_layers=2)
    assert qwen2.add_qkv_bias and qwen2.untie_embeddings_and_output_weights and qwen2.rotary_base == 1e6
    assert qwen2.mtp_num_layers == 2


def test_unsupported_llm_is_named(hf_models, tmp_path):
    folder = tmp_path / 'scaled'
    shutil.copytree(hf_models['llama'], folder)
    config = json.load(open(folder / 'config.json'))
    config['rope_scaling'] = {'rope_type': 'llama3', 'factor': 8.0}
    json.dump(config, open(folder / 'config.json', 'w'))
    with pytest.raises(ConfigError, match="rope_type 'llama3'"):
        salm_config_from_hf(str(folder))
    config['model_type'] = 'gemma'
    json.dump(config, open(folder / 'config.json', 'w'))
    with pytest.raises(ConfigError, match="model_type 'gemma'"):
        salm_config_from_hf(str(folder))


def _with_extra_tensors(base: str, folder, extra: dict) -> TensorSource:
    """A copy of ``base`` whose checkpoint also holds ``extra`` (a second safetensors file)."""
    from safetensors.torch import save_file
    shutil.copytree(base, folder)
    save_file({k: v.contiguous() for k, v in extra.items()}, os.path.join(folder, 'mtp.safetensors'))
    return TensorSource(str(folder))


def _hf_layer(prefix: str, gen) -> dict:
    shapes = {'input_layernorm.weight': (32,), 'post_attention_layernorm.weight': (32,),
              'self_attn.q_proj.weight': (64, 32), 'self_attn.k_proj.weight': (32, 32),
              'self_attn.v_proj.weight': (32, 32), 'self_attn.o_proj.weight': (32, 64),
              'self_attn.q_norm.weight': (16,), 'self_attn.k_norm.weight': (16,),
              'mlp.gate_proj.weight': (48, 32), 'mlp.up_proj.weight': (48, 32),
              'mlp.down_proj.weight': (32, 48)}
    return {prefix + n: torch.randn(s, generator=gen) for n, s in shapes.items()}


@pytest.mark.parametrize('style', ['mimo', 'qwen3_next', 'megatron'])
def test_other_shipped_mtp_styles(hf_models, tmp_path, style):
    from megatron_salm_mtp.convert.hf_llm import llm_recipes
    from megatron_salm_mtp.convert.mtp_init import mtp_recipes
    gen = torch.Generator().manual_seed(0)
    w = lambda *s: torch.randn(s, generator=gen)  # noqa: E731
    if style == 'mimo':
        extra = {'model.mtp_layers.0.token_layernorm.weight': w(32),
                 'model.mtp_layers.0.hidden_layernorm.weight': w(32),
                 'model.mtp_layers.0.input_proj.weight': w(32, 64), 'model.mtp_layers.0.final_layernorm.weight': w(32),
                 **_hf_layer('model.mtp_layers.0.', gen)}
        layer = 'model.mtp_layers.0.'
        eh_key, enorm_key = layer + 'input_proj.weight', layer + 'token_layernorm.weight'
    elif style == 'qwen3_next':
        extra = {'mtp.fc.weight': w(32, 64), 'mtp.pre_fc_norm_embedding.weight': w(32),
                 'mtp.pre_fc_norm_hidden.weight': w(32), 'mtp.norm.weight': w(32), **_hf_layer('mtp.layers.0.', gen)}
        eh_key, enorm_key, layer = 'mtp.fc.weight', 'mtp.pre_fc_norm_embedding.weight', 'mtp.layers.0.'
    else:
        extra = {'mtp.layers.0.eh_proj.weight': w(32, 64), 'mtp.layers.0.enorm.weight': w(32),
                 'mtp.layers.0.hnorm.weight': w(32), 'mtp.layers.0.final_layernorm.weight': w(32),
                 'mtp.layers.0.transformer_layer.self_attention.linear_qkv.weight': w(128, 32)}
        eh_key, enorm_key, layer = 'mtp.layers.0.eh_proj.weight', 'mtp.layers.0.enorm.weight', None
    src = _with_extra_tensors(hf_models['qwen3'], tmp_path / style, extra)
    cfg = salm_config_from_hf(str(tmp_path / style))
    assert cfg.mtp_num_layers == 1
    recipes, report = mtp_recipes(src, cfg, llm_recipes(cfg), 1, 'last_layer', False, False)
    assert 'loaded from the checkpoint' in report[0]
    p = 'language_model.mtp.layers.0.'
    eh = recipes[p + 'eh_proj.weight'].full(src)
    if style == 'mimo':  # stored over cat(hidden, embedding): reordered to cat(embedding, hidden)
        assert torch.equal(eh, torch.cat([extra[eh_key][:, 32:], extra[eh_key][:, :32]], 1))
    else:
        assert torch.equal(eh, extra[eh_key])
    assert torch.equal(recipes[p + 'enorm.weight'].full(src), extra[enorm_key])
    qkv = recipes[p + 'transformer_layer.self_attention.linear_qkv.weight'].full(src)
    if layer:
        q, k = extra[layer + 'self_attn.q_proj.weight'], extra[layer + 'self_attn.k_proj.weight']
        assert torch.equal(qkv[:32], q[:32]) and torch.equal(qkv[32:48], k[:16])  # group 0: 2 q heads, k
    else:
        assert torch.equal(qkv, extra['mtp.layers.0.transformer_layer.self_attention.linear_qkv.weight'])


def test_export_copies_every_tensor_with_progress(monkeypatch, capsys):
    """With the interval at 0, one progress line per tensor copied off the model, the last N/N;
    the copies are float32 CPU tensors equal to the model's."""
    monkeypatch.setattr(export, 'PROGRESS_SECONDS', 0.0)
    module = torch.nn.Module()
    module.language_model = torch.nn.Module()
    module.language_model.decoder = torch.nn.Module()
    module.language_model.decoder.layers = torch.nn.ModuleList(
        [torch.nn.Linear(3, 2), torch.nn.Linear(2, 2, bias=False)]).to(torch.bfloat16)
    weights = export.model_tensors(module, SALMConfig(num_layers=2))
    assert list(weights) == ['language_model.decoder.layers.0.weight', 'language_model.decoder.layers.0.bias',
                             'language_model.decoder.layers.1.weight']
    for name, tensor in module.state_dict().items():
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], tensor.float())
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(',')[0] for line in lines] == [f'export-hf: {i}/3 tensors ({100 * i / 3:.0f}%)'
                                                      for i in (1, 2, 3)]
    assert 'ETA' in lines[0] and 'done in' in lines[-1]
