"""``export-hf``: a plugin checkpoint -> Hugging Face folders.

    OUT/config.json, OUT/model.safetensors     the LLM as a Llama / Qwen2 / Qwen3 causal LM that
                                               transformers loads; MTP depth k (0-based) is stored
                                               DeepSeek-V3 style as the extra layer
                                               ``model.layers.{L+k}.`` with ``enorm``, ``hnorm``,
                                               ``eh_proj`` (over cat(enorm(embedding), hnorm(hidden))),
                                               ``shared_head.norm`` and a full decoder layer;
                                               ``num_nextn_predict_layers`` = D in config.json
                                               (transformers ignores those layers).
    OUT/audio_encoder/{config.json,model.safetensors}  the encoder under Whisper names
                                               (``import-hf --whisper`` reads it back)
    OUT/audio_projector.safetensors            the projector's two linear layers (and layer mix)
    OUT/salm_config.json                       how the pieces are assembled

The encoder's key bias is dropped: Whisper has none, and a key bias adds the same q.b to every
score of a query, which softmax cancels, so the export is exact.
"""

import dataclasses
import json
import os

import torch
from safetensors.torch import save_file

from ..checkpoint.metadata import read_checkpoint_config
from ..checkpoint.save_load import load_checkpoint
from ..config import SALMConfig
from ..data.progress import Progress
from ..parallel.setup import build_model, init_distributed, init_model_parallel, release_distributed
from . import hf_llm, hf_whisper
from .load import PROGRESS_SECONDS, full_name


def _family(cfg: SALMConfig):
    if cfg.qk_layernorm:
        return 'qwen3', 'Qwen3ForCausalLM'
    if cfg.add_qkv_bias:
        return 'qwen2', 'Qwen2ForCausalLM'
    return 'llama', 'LlamaForCausalLM'


def llm_config(cfg: SALMConfig, base: dict | None = None) -> dict:
    model_type, architecture = _family(cfg)
    heads = cfg.num_attention_heads
    out = dict(base or {})
    out.update(
        model_type=out.get('model_type', model_type), architectures=out.get('architectures', [architecture]),
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=heads, num_key_value_heads=cfg.num_query_groups or heads,
        head_dim=cfg.kv_channels or cfg.hidden_size // heads, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=cfg.rotary_base,
        rope_parameters={'rope_type': 'default', 'rope_theta': cfg.rotary_base},
        tie_word_embeddings=not cfg.untie_embeddings_and_output_weights,
        hidden_act='silu', attention_bias=False, mlp_bias=False,
        max_position_embeddings=out.get('max_position_embeddings', cfg.seq_length),
        num_nextn_predict_layers=cfg.mtp_depths, torch_dtype='bfloat16' if cfg.bf16 else 'float32')
    out.pop('dtype', None)
    return out


def llm_tensors(weights: dict, cfg: SALMConfig) -> dict:
    out = {'model.embed_tokens.weight': weights['language_model.embedding.word_embeddings.weight'],
           'model.norm.weight': weights['language_model.decoder.final_layernorm.weight']}
    if cfg.untie_embeddings_and_output_weights:
        out['lm_head.weight'] = weights['language_model.output_layer.weight']
    for i in range(cfg.num_layers):
        out.update(hf_llm.split_layer(weights, f'language_model.decoder.layers.{i}.',
                                      f'model.layers.{i}.', cfg))
    mtp_layers = 1 if cfg.mtp_use_repeated_layer else cfg.mtp_depths
    for k in range(cfg.mtp_depths):
        p, h = f'language_model.mtp.layers.{min(k, mtp_layers - 1)}.', f'model.layers.{cfg.num_layers + k}.'
        for ours, theirs in (('enorm', 'enorm'), ('hnorm', 'hnorm'), ('eh_proj', 'eh_proj'),
                             ('final_layernorm', 'shared_head.norm')):
            out[f'{h}{theirs}.weight'] = weights[f'{p}{ours}.weight']
        out.update(hf_llm.split_layer(weights, p + 'transformer_layer.', h, cfg))
    return out


def encoder_tensors(weights: dict, cfg: SALMConfig) -> dict:
    out = {theirs: weights[ours] for ours, theirs in hf_whisper.export_names(cfg).items()}
    d = cfg.encoder_hidden_size
    for i in range(cfg.encoder_num_layers):
        p = f'audio_encoder.transformer.layers.{i}.self_attention.linear_qkv.'
        h = f'encoder.layers.{i}.self_attn.'
        for kind in ('weight', 'bias'):  # one group per head: [q_h, k_h, v_h] per head
            heads = cfg.encoder_num_attention_heads
            fused = weights[p + kind].reshape((heads, 3, d // heads) + tuple(weights[p + kind].shape[1:]))
            q, k, v = (fused[:, j].reshape((d,) + tuple(fused.shape[3:])) for j in range(3))
            out[h + f'q_proj.{kind}'], out[h + f'v_proj.{kind}'] = q, v
            if kind == 'weight':
                out[h + 'k_proj.weight'] = k
    return out


def encoder_config(cfg: SALMConfig) -> dict:
    return dict(model_type='whisper', num_mel_bins=cfg.num_mel_bins, encoder_layers=cfg.encoder_num_layers,
                d_model=cfg.encoder_hidden_size, encoder_attention_heads=cfg.encoder_num_attention_heads,
                encoder_ffn_dim=cfg.encoder_ffn_hidden_size or 4 * cfg.encoder_hidden_size,
                max_source_positions=cfg.encoder_max_source_positions, activation_function='gelu')


MIXED_INPUT = ("softmax(layer_weights)-weighted sum of every encoder layer's output, each through the "
               "encoder's final layer_norm")


def salm_assembly(cfg: SALMConfig) -> dict:
    return {
        'format': 'megatron_salm_mtp/1',
        'llm': {'folder': '.', 'mtp': {
            'num_layers': cfg.mtp_depths, 'names': 'deepseek_v3: model.layers.{num_hidden_layers + k}.',
            'input': 'eh_proj(cat(enorm(embed(token[i+k+1])), hnorm(hidden[i])))',
            'shared_weights': 'embedding and output head shared with the LLM',
            'repeated_layer': cfg.mtp_use_repeated_layer, 'layer_pattern': cfg.mtp_layer_pattern}},
        'audio_encoder': {'folder': 'audio_encoder', 'names': 'whisper encoder',
                          'mask': 'frames past each utterance length are zeroed after conv1 and masked as keys'},
        'audio_projector': {'file': 'audio_projector.safetensors', 'type': '2-layer GELU MLP',
                            'frame_stack': cfg.audio_frame_stack,
                            'input_size': cfg.audio_frame_stack * cfg.encoder_hidden_size,
                            'output_size': cfg.hidden_size,
                            'stacking': 'concatenate frame_stack consecutive encoder frames (zero-padded tail)',
                            'input': MIXED_INPUT if cfg.encoder_layer_mix else "the encoder's output"},
        'audio_token_id': cfg.audio_token_id,
        'splice': 'one audio_token_id placeholder per projected audio token, replaced by it',
        'salm_config': dataclasses.asdict(cfg),
    }


def projector_tensors(weights: dict) -> dict:
    """The projector's two linear layers by their own names, and its layer mix's weights if any."""
    prefix = 'audio_projector.mlp.encoder.'
    out = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if 'audio_projector.layer_weights' in weights:
        out['layer_weights'] = weights['audio_projector.layer_weights']
    return out


def write_hf(weights: dict, cfg: SALMConfig, out: str, base_config: dict | None = None) -> None:
    os.makedirs(os.path.join(out, 'audio_encoder'), exist_ok=True)
    contiguous = lambda d: {k: v.detach().contiguous() for k, v in d.items()}  # noqa: E731
    save_file(contiguous(llm_tensors(weights, cfg)), os.path.join(out, 'model.safetensors'),
              metadata={'format': 'pt'})
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(llm_config(cfg, base_config), f, indent=2)
    save_file(contiguous(encoder_tensors(weights, cfg)), os.path.join(out, 'audio_encoder', 'model.safetensors'),
              metadata={'format': 'pt'})
    with open(os.path.join(out, 'audio_encoder', 'config.json'), 'w') as f:
        json.dump(encoder_config(cfg), f, indent=2)
    save_file(contiguous(projector_tensors(weights)), os.path.join(out, 'audio_projector.safetensors'),
              metadata={'format': 'pt'})
    with open(os.path.join(out, 'salm_config.json'), 'w') as f:
        json.dump(salm_assembly(cfg), f, indent=2)


def model_tensors(module: torch.nn.Module, cfg: SALMConfig) -> dict:
    """Every tensor of ``module`` (the TP=1/PP=1 SALM) by its full name, copied off its device as
    float32, with a progress line (tensors done, rate, ETA) at most every ``PROGRESS_SECONDS`` and
    one at the end: the export runs in one process, rank 0."""
    named = [(name, tensor) for name, tensor in module.state_dict().items()
             if not name.endswith('_extra_state') and tensor is not None]
    progress = Progress('export-hf', len(named), 'tensors', PROGRESS_SECONDS)
    weights = {}
    for name, tensor in named:
        weights[full_name(name, cfg, 0)] = tensor.detach().float().cpu()
        progress.advance()
    return weights


def run_export(load_dir: str, out: str, base_config_path: str | None = None) -> None:
    """Load the latest checkpoint at TP=1/PP=1 in this one process and write the folders."""
    init_distributed(lone=True)
    cfg = read_checkpoint_config(load_dir).with_single_device_layout()
    init_model_parallel(cfg, seed=1234)
    model = build_model(cfg, wrap_ddp=False)
    load_checkpoint(load_dir, model, None, None, load_optimizer=False)
    weights = model_tensors(model[0], cfg)
    base = None
    if base_config_path:
        path = base_config_path if base_config_path.endswith('.json') else os.path.join(base_config_path, 'config.json')
        with open(path) as f:
            base = json.load(f)
    write_hf(weights, cfg, out, base)
    for name in ('tokenizer.json', 'tokenizer_config.json', 'generation_config.json'):
        if os.path.isfile(os.path.join(load_dir, name)):
            with open(os.path.join(load_dir, name), 'rb') as src, open(os.path.join(out, name), 'wb') as dst:
                dst.write(src.read())
    print(f'wrote {out}: LLM ({cfg.num_layers} layers + {cfg.mtp_depths} MTP layer(s) as '
          f'model.layers.{cfg.num_layers}..), audio_encoder/, audio_projector.safetensors, salm_config.json',
          flush=True)
    release_distributed()
