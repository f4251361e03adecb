"""Hugging Face Whisper encoder (``WhisperModel`` or ``WhisperForConditionalGeneration``) <->
the SALM's ``audio_encoder`` (laid out one to one with it).

    conv1, conv2, embed_positions          -> audio_encoder.conv1, conv2, embed_positions
    layers.i.self_attn_layer_norm          -> transformer.layers.i.input_layernorm
    layers.i.self_attn.{q,k,v}_proj        -> ...self_attention.linear_qkv (k has no bias: zeros)
    layers.i.self_attn.out_proj            -> ...self_attention.linear_proj
    layers.i.final_layer_norm              -> ...pre_mlp_layernorm
    layers.i.fc1, fc2                      -> ...mlp.linear_fc1, linear_fc2
    layer_norm                             -> transformer.final_layernorm

The decoder is not used. Whisper scales queries by head_dim ** -0.5 before the dot product, which
is the same as Megatron's softmax scale, and uses exact (erf) GELU, as the plugin does.
"""


from ..config import ConfigError
from .recipes import Copy, FusedQKV, Recipe


def encoder_prefix(src) -> str:
    for prefix in ('model.encoder.', 'encoder.'):
        if prefix + 'conv1.weight' in src:
            return prefix
    raise ConfigError('--whisper: no Whisper encoder tensors (encoder.conv1.weight) in the checkpoint')


def salm_fields(hf: dict) -> dict:
    if hf.get('model_type') != 'whisper':
        raise ConfigError(f"--whisper: model_type {hf.get('model_type')!r} is not 'whisper'")
    if hf.get('activation_function', 'gelu') != 'gelu':
        raise ConfigError(f"--whisper: activation_function {hf['activation_function']!r}: only gelu")
    return dict(num_mel_bins=hf['num_mel_bins'], encoder_num_layers=hf['encoder_layers'],
                encoder_hidden_size=hf['d_model'],
                encoder_num_attention_heads=hf['encoder_attention_heads'],
                encoder_ffn_hidden_size=hf['encoder_ffn_dim'],
                encoder_max_source_positions=hf['max_source_positions'])


def check_whisper_shaped(cfg, what: str) -> None:
    """A Whisper encoder has no convolution modules to fill or to take."""
    if cfg.encoder_conv_kernel_size:
        raise ConfigError(f'{what}: a Whisper encoder has no convolution modules, the SALM has '
                          f'--encoder-conv-kernel-size {cfg.encoder_conv_kernel_size} (set it to 0)')


def encoder_recipes(src, cfg) -> dict[str, Recipe]:
    check_whisper_shaped(cfg, '--whisper')
    e = encoder_prefix(src)
    heads = cfg.encoder_num_attention_heads
    head_dim = cfg.encoder_hidden_size // heads
    out = {f'audio_encoder.{n}': Copy(e + n)
           for n in ('conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias')}
    out['audio_encoder.embed_positions'] = Copy(e + 'embed_positions.weight')
    out['audio_encoder.transformer.final_layernorm.weight'] = Copy(e + 'layer_norm.weight')
    out['audio_encoder.transformer.final_layernorm.bias'] = Copy(e + 'layer_norm.bias')
    for i in range(cfg.encoder_num_layers):
        h, p = f'{e}layers.{i}.', f'audio_encoder.transformer.layers.{i}.'
        a = h + 'self_attn.'
        for kind in ('weight', 'bias'):
            out[p + f'input_layernorm.{kind}'] = Copy(h + f'self_attn_layer_norm.{kind}')
            out[p + f'pre_mlp_layernorm.{kind}'] = Copy(h + f'final_layer_norm.{kind}')
            out[p + f'self_attention.linear_qkv.{kind}'] = FusedQKV(
                a + f'q_proj.{kind}', a + f'k_proj.{kind}', a + f'v_proj.{kind}', heads, heads,
                head_dim, bias=kind == 'bias')
            out[p + f'self_attention.linear_proj.{kind}'] = Copy(a + f'out_proj.{kind}')
            out[p + f'mlp.linear_fc1.{kind}'] = Copy(h + f'fc1.{kind}')
            out[p + f'mlp.linear_fc2.{kind}'] = Copy(h + f'fc2.{kind}')
    return out


def export_names(cfg) -> dict[str, str]:
    """Megatron encoder tensor -> Whisper name (``encoder.`` prefix), for plain copies; the fused
    QKV is split by the caller."""
    check_whisper_shaped(cfg, 'export-hf')
    out = {f'audio_encoder.{n}': f'encoder.{n}'
           for n in ('conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias')}
    out['audio_encoder.embed_positions'] = 'encoder.embed_positions.weight'
    for kind in ('weight', 'bias'):
        out[f'audio_encoder.transformer.final_layernorm.{kind}'] = f'encoder.layer_norm.{kind}'
        for i in range(cfg.encoder_num_layers):
            h, p = f'encoder.layers.{i}.', f'audio_encoder.transformer.layers.{i}.'
            out[p + f'input_layernorm.{kind}'] = h + f'self_attn_layer_norm.{kind}'
            out[p + f'pre_mlp_layernorm.{kind}'] = h + f'final_layer_norm.{kind}'
            out[p + f'self_attention.linear_proj.{kind}'] = h + f'self_attn.out_proj.{kind}'
            out[p + f'mlp.linear_fc1.{kind}'] = h + f'fc1.{kind}'
            out[p + f'mlp.linear_fc2.{kind}'] = h + f'fc2.{kind}'
    return out
