"""Hugging Face Llama / Qwen2 / Qwen3 causal LMs <-> the SALM's LLM (Megatron names, TP=1).

Name map (per decoder layer i; ``model.layers.i.`` -> ``language_model.decoder.layers.i.``):

    input_layernorm                  -> input_layernorm
    self_attn.{q,k,v}_proj (+ bias)  -> self_attention.linear_qkv (fused per query group)
    self_attn.{q,k}_norm (Qwen3)     -> self_attention.{q,k}_layernorm
    self_attn.o_proj                 -> self_attention.linear_proj
    post_attention_layernorm         -> pre_mlp_layernorm
    mlp.{gate,up}_proj               -> mlp.linear_fc1 ([gate; up])
    mlp.down_proj                    -> mlp.linear_fc2

plus ``model.embed_tokens`` -> ``embedding.word_embeddings``, ``model.norm`` ->
``decoder.final_layernorm`` and ``lm_head`` -> ``output_layer`` (untied models only). Both
families use non-interleaved (``rotate_half``) RoPE, as Megatron does, so no permutation of the
q/k rows is needed.
"""


from ..config import ConfigError
from .recipes import Copy, FusedQKV, GatedFC1, Recipe

SUPPORTED_MODEL_TYPES = ('llama', 'qwen2', 'qwen3', 'mimo')


def rope_theta(hf: dict) -> float:
    params = hf.get('rope_parameters') or {}
    return float(hf.get('rope_theta') or params.get('rope_theta') or 10000.0)


def check_supported(hf: dict, src) -> None:
    """Refuse, naming the setting, what the SALM's LLM cannot represent exactly."""
    kind = hf.get('model_type')
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"--llm: model_type {kind!r} is not supported (choose one of "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)})")
    scaling = hf.get('rope_scaling') or {}
    rope_type = scaling.get('rope_type') or scaling.get('type') or \
        (hf.get('rope_parameters') or {}).get('rope_type') or 'default'
    if rope_type != 'default':
        raise ConfigError(f'--llm: rope_type {rope_type!r} (RoPE scaling) is not supported yet; only '
                          'plain RoPE imports exactly')
    if hf.get('hidden_act', 'silu') != 'silu':
        raise ConfigError(f"--llm: hidden_act {hf['hidden_act']!r}: the SALM's LLM uses SwiGLU (silu)")
    if hf.get('mlp_bias'):
        raise ConfigError("--llm: mlp_bias=true is not supported (the LLM's MLP has no bias)")
    if hf.get('use_sliding_window'):
        raise ConfigError('--llm: use_sliding_window=true is not supported (full attention only)')
    if 'model.layers.0.self_attn.o_proj.bias' in src:
        raise ConfigError('--llm: the checkpoint has an o_proj bias (attention_bias on every '
                          'projection); only Qwen2-style q/k/v biases are supported')


def salm_fields(hf: dict, src) -> dict:
    """SALMConfig fields of the LLM part from a Hugging Face config.json (and the tensors present)."""
    check_supported(hf, src)
    heads = hf['num_attention_heads']
    head_dim = hf.get('head_dim') or hf['hidden_size'] // heads
    return dict(
        num_layers=hf['num_hidden_layers'], hidden_size=hf['hidden_size'],
        ffn_hidden_size=hf['intermediate_size'], num_attention_heads=heads,
        num_query_groups=hf.get('num_key_value_heads') or heads,
        kv_channels=head_dim,
        qk_layernorm='model.layers.0.self_attn.q_norm.weight' in src,
        add_qkv_bias='model.layers.0.self_attn.q_proj.bias' in src,
        untie_embeddings_and_output_weights=not hf.get('tie_word_embeddings', False),
        vocab_size=hf['vocab_size'], make_vocab_size_divisible_by=None,
        rotary_base=rope_theta(hf), norm_epsilon=float(hf.get('rms_norm_eps', 1e-6)),
        position_embedding_type='rope')


def layer_recipes(hf_prefix: str, prefix: str, cfg) -> dict[str, Recipe]:
    """One transformer layer stored with Hugging Face names under ``hf_prefix``."""
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads
    head_dim = cfg.kv_channels or cfg.hidden_size // heads
    a, m = hf_prefix + 'self_attn.', hf_prefix + 'mlp.'
    out = {
        prefix + 'input_layernorm.weight': Copy(hf_prefix + 'input_layernorm.weight'),
        prefix + 'self_attention.linear_qkv.weight': FusedQKV(
            a + 'q_proj.weight', a + 'k_proj.weight', a + 'v_proj.weight', heads, groups, head_dim),
        prefix + 'self_attention.linear_proj.weight': Copy(a + 'o_proj.weight'),
        prefix + 'pre_mlp_layernorm.weight': Copy(hf_prefix + 'post_attention_layernorm.weight'),
        prefix + 'mlp.linear_fc1.weight': GatedFC1(m + 'gate_proj.weight', m + 'up_proj.weight'),
        prefix + 'mlp.linear_fc2.weight': Copy(m + 'down_proj.weight'),
    }
    if cfg.add_qkv_bias:
        out[prefix + 'self_attention.linear_qkv.bias'] = FusedQKV(
            a + 'q_proj.bias', a + 'k_proj.bias', a + 'v_proj.bias', heads, groups, head_dim, bias=True)
    if cfg.qk_layernorm:
        out[prefix + 'self_attention.q_layernorm.weight'] = Copy(a + 'q_norm.weight')
        out[prefix + 'self_attention.k_layernorm.weight'] = Copy(a + 'k_norm.weight')
    return out


def llm_recipes(cfg) -> dict[str, Recipe]:
    """Every LLM tensor (MTP excluded) by its full TP=1 Megatron name."""
    vocab = cfg.padded_vocab_size
    out = {'language_model.embedding.word_embeddings.weight': Copy('model.embed_tokens.weight', rows=vocab),
           'language_model.decoder.final_layernorm.weight': Copy('model.norm.weight')}
    for i in range(cfg.num_layers):
        out.update(layer_recipes(f'model.layers.{i}.', f'language_model.decoder.layers.{i}.', cfg))
    if cfg.untie_embeddings_and_output_weights:
        out['language_model.output_layer.weight'] = Copy('lm_head.weight', rows=vocab)
    return out


# ----------------------------------------------------------------------------- export direction

def hf_layer_names(prefix: str, hf_prefix: str, cfg) -> dict[str, str]:
    """Megatron layer tensor -> Hugging Face name, for the parts exported by a plain copy."""
    a, m = hf_prefix + 'self_attn.', hf_prefix + 'mlp.'
    out = {prefix + 'input_layernorm.weight': hf_prefix + 'input_layernorm.weight',
           prefix + 'self_attention.linear_proj.weight': a + 'o_proj.weight',
           prefix + 'pre_mlp_layernorm.weight': hf_prefix + 'post_attention_layernorm.weight',
           prefix + 'mlp.linear_fc2.weight': m + 'down_proj.weight'}
    if cfg.qk_layernorm:
        out[prefix + 'self_attention.q_layernorm.weight'] = a + 'q_norm.weight'
        out[prefix + 'self_attention.k_layernorm.weight'] = a + 'k_norm.weight'
    return out


def split_layer(weights: dict, prefix: str, hf_prefix: str, cfg) -> dict:
    """A Megatron layer (full TP=1 tensors) as Hugging Face tensors."""
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads
    head_dim = cfg.kv_channels or cfg.hidden_size // heads
    per = heads // groups
    out = {hf: weights[name] for name, hf in hf_layer_names(prefix, hf_prefix, cfg).items()
           if name in weights}
    for kind in ('weight', 'bias'):
        name = prefix + f'self_attention.linear_qkv.{kind}'
        if name not in weights:
            continue
        fused = weights[name]
        grouped = fused.reshape((groups, (per + 2) * head_dim) + tuple(fused.shape[1:]))
        tail = tuple(fused.shape[1:])
        q, k, v = grouped.split([per * head_dim, head_dim, head_dim], dim=1)
        out[hf_prefix + f'self_attn.q_proj.{kind}'] = q.reshape((heads * head_dim,) + tail)
        out[hf_prefix + f'self_attn.k_proj.{kind}'] = k.reshape((groups * head_dim,) + tail)
        out[hf_prefix + f'self_attn.v_proj.{kind}'] = v.reshape((groups * head_dim,) + tail)
    fc1 = prefix + 'mlp.linear_fc1.weight'
    if fc1 in weights:
        gate, up = weights[fc1].chunk(2, dim=0)
        out[hf_prefix + 'mlp.gate_proj.weight'], out[hf_prefix + 'mlp.up_proj.weight'] = gate, up
    return out
