"""MTP heads for an imported LLM: keep the ones a checkpoint ships, or build new ones.

Shipped heads are recognised by their names:

* DeepSeek-V3: ``model.layers.{L+k}.{enorm,hnorm,eh_proj,shared_head.norm}`` plus a full decoder
  layer under the same prefix (``shared_head.head`` / ``embed_tokens`` copies are the shared
  output head and embedding and are not kept separately). ``export-hf`` writes this form.
* MiMo: ``model.mtp_layers.k.{token_layernorm,hidden_layernorm,input_proj,final_layernorm}`` plus
  the layer (optionally under ``mtp_block.``); ``input_proj`` takes ``cat(hidden, embedding)`` and
  is reordered to Megatron's ``cat(embedding, hidden)``.
* Qwen3-Next style: ``mtp.{fc,pre_fc_norm_embedding,pre_fc_norm_hidden,norm}`` shared by the
  layers ``mtp.layers.k``, for dense layers with plain RMSNorm weights (Qwen3-Next's own heads -
  gated attention, MoE, zero-centred norms - do not fit the SALM's dense MTP layer).
* Megatron: ``[language_model.]mtp.layers.k.{enorm,hnorm,eh_proj,transformer_layer.*,final_layernorm}``.

New heads (``--mtp-init``):

* ``last_layer`` (default): each depth's transformer layer is a copy of the last decoder layer,
  ``enorm``/``hnorm`` are ones, the final norm is a copy of the decoder's final norm, and
  ``eh_proj = [0 | I]`` (zeros on the embedding half, identity on the hidden half). At step 0 a
  depth therefore runs the copied last layer on the (normalised) trunk output: the layer receives
  inputs of the statistics it was trained on instead of a random projection that would make the
  copy meaningless, while the embedding half still receives gradient (its input is non-zero) and
  learns to bring in the next token.
* ``random``: Megatron's own initialisation of the freshly built heads (normal, init_method_std).
"""

import re

import torch

from ..config import ConfigError
from .hf_llm import layer_recipes
from .recipes import Constant, Copy, FromRecipe, Recipe, SwapHalves

MTP_INIT_CHOICES = ('last_layer', 'random')
_MEGATRON_LAYER = ('input_layernorm.weight', 'self_attention.linear_qkv.weight',
                   'self_attention.linear_qkv.bias', 'self_attention.q_layernorm.weight',
                   'self_attention.k_layernorm.weight', 'self_attention.linear_proj.weight',
                   'pre_mlp_layernorm.weight', 'mlp.linear_fc1.weight', 'mlp.linear_fc2.weight')


def _mtp(k: int) -> str:
    return f'language_model.mtp.layers.{k}.'


def _indices(src, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for m in map(regex.match, src.keys()) if m})


def shipped_mtp(src, cfg) -> tuple[str | None, list[dict[str, Recipe]]]:
    """(style, one recipe map per shipped depth), or (None, []) when the checkpoint has no MTP."""
    layers = cfg.num_layers
    deepseek = [i for i in _indices(src, r'model\.layers\.(\d+)\.eh_proj\.weight$') if i >= layers]
    if deepseek:
        depths = []
        for k, i in enumerate(deepseek):
            h = f'model.layers.{i}.'
            depth = {_mtp(k) + 'enorm.weight': Copy(h + 'enorm.weight'),
                     _mtp(k) + 'hnorm.weight': Copy(h + 'hnorm.weight'),
                     _mtp(k) + 'eh_proj.weight': Copy(h + 'eh_proj.weight'),
                     _mtp(k) + 'final_layernorm.weight': Copy(h + 'shared_head.norm.weight')}
            depth.update(_layer(src, h, _mtp(k), cfg))
            depths.append(depth)
        return 'DeepSeek-V3 (model.layers.{L+k}.*)', depths
    mimo = _indices(src, r'model\.mtp_layers\.(\d+)\.input_proj\.weight$')
    if mimo:
        depths = []
        for k in mimo:
            h = f'model.mtp_layers.{k}.'
            block = h + 'mtp_block.' if f'{h}mtp_block.input_layernorm.weight' in src else h
            depth = {_mtp(k) + 'enorm.weight': Copy(h + 'token_layernorm.weight'),
                     _mtp(k) + 'hnorm.weight': Copy(h + 'hidden_layernorm.weight'),
                     _mtp(k) + 'eh_proj.weight': SwapHalves(h + 'input_proj.weight'),
                     _mtp(k) + 'final_layernorm.weight': Copy(h + 'final_layernorm.weight')}
            depth.update(_layer(src, block, _mtp(k), cfg))
            depths.append(depth)
        return 'MiMo (model.mtp_layers.k.*)', depths
    megatron = _indices(src, r'(?:language_model\.)?mtp\.layers\.(\d+)\.eh_proj\.weight$')
    if megatron:
        lead = 'language_model.' if f'language_model.mtp.layers.{megatron[0]}.eh_proj.weight' in src else ''
        depths = []
        for k in megatron:
            h = f'{lead}mtp.layers.{k}.'
            names = ['enorm.weight', 'hnorm.weight', 'eh_proj.weight', 'final_layernorm.weight']
            names += ['transformer_layer.' + n for n in _MEGATRON_LAYER]
            depths.append({_mtp(k) + n: Copy(h + n) for n in names if h + n in src})
        return 'Megatron (mtp.layers.k.*)', depths
    if 'mtp.fc.weight' in src:
        depths = []
        for k in _indices(src, r'mtp\.layers\.(\d+)\.'):
            depth = {_mtp(k) + 'enorm.weight': Copy('mtp.pre_fc_norm_embedding.weight'),
                     _mtp(k) + 'hnorm.weight': Copy('mtp.pre_fc_norm_hidden.weight'),
                     _mtp(k) + 'eh_proj.weight': Copy('mtp.fc.weight'),
                     _mtp(k) + 'final_layernorm.weight': Copy('mtp.norm.weight')}
            depth.update(_layer(src, f'mtp.layers.{k}.', _mtp(k), cfg))
            depths.append(depth)
        return 'Qwen3-Next (mtp.*)', depths
    return None, []


def _layer(src, hf_prefix: str, prefix: str, cfg) -> dict[str, Recipe]:
    """An MTP depth's transformer layer with Hugging Face names; parts absent from the checkpoint
    (an MTP layer without attention or MLP, see --mtp-layer-pattern) are left out."""
    recipes = layer_recipes(hf_prefix, prefix + 'transformer_layer.', cfg)
    return {n: r for n, r in recipes.items() if all(s in src for s in r.sources())}


def new_depth(k: int, cfg, mtp_init: str, decoder: dict[str, Recipe]) -> dict[str, Recipe]:
    """Recipes of a new MTP depth ``k``; empty for ``random`` (the model's own initialisation)."""
    if mtp_init == 'random':
        return {}
    hidden = cfg.hidden_size
    last = f'language_model.decoder.layers.{cfg.num_layers - 1}.'

    def eh_proj():
        return torch.cat([torch.zeros(hidden, hidden), torch.eye(hidden)], dim=1)

    out = {_mtp(k) + 'enorm.weight': Constant(lambda: torch.ones(hidden), 'ones'),
           _mtp(k) + 'hnorm.weight': Constant(lambda: torch.ones(hidden), 'ones'),
           _mtp(k) + 'eh_proj.weight': Constant(eh_proj, '[0 | I]'),
           _mtp(k) + 'final_layernorm.weight': FromRecipe(
               decoder['language_model.decoder.final_layernorm.weight'], 'decoder.final_layernorm')}
    for name, recipe in decoder.items():
        if name.startswith(last):
            out[_mtp(k) + 'transformer_layer.' + name[len(last):]] = FromRecipe(recipe, name)
    return out


def mtp_recipes(src, cfg, decoder: dict[str, Recipe], depth: int, mtp_init: str,
                replace_existing: bool, extend_depth: bool) -> tuple[dict[str, Recipe], list[str]]:
    """Recipes of ``depth`` MTP depths and a report line per decision (printed by import-hf)."""
    if mtp_init not in MTP_INIT_CHOICES:
        raise ConfigError(f"--mtp-init {mtp_init!r}: choose {' or '.join(MTP_INIT_CHOICES)}")
    style, shipped = shipped_mtp(src, cfg)
    report, recipes = [], {}
    if shipped and not replace_existing:
        if depth < len(shipped) or (depth > len(shipped) and not extend_depth):
            raise ConfigError(
                f'--mtp-num-layers {depth}, but the checkpoint ships {len(shipped)} MTP depth(s) '
                f'({style}): pass --mtp-num-layers {len(shipped)} to keep them'
                + (', --mtp-extend-depth to add depths after them' if depth > len(shipped) else '')
                + ', or --mtp-replace-existing-head to build new heads instead')
        for k, depth_recipes in enumerate(shipped):
            recipes.update(depth_recipes)
            report.append(f'mtp depth {k + 1}: loaded from the checkpoint ({style})')
        for k in range(len(shipped), depth):  # --mtp-extend-depth
            last = shipped[-1]
            if mtp_init == 'random':
                report.append(f'mtp depth {k + 1}: new, random initialisation (--mtp-extend-depth)')
                continue
            base, new = _mtp(len(shipped) - 1), _mtp(k)
            recipes.update({new + n[len(base):]: FromRecipe(r, n) for n, r in last.items()})
            report.append(f'mtp depth {k + 1}: new, copy of shipped depth {len(shipped)} '
                          '(--mtp-extend-depth)')
        return recipes, report
    if shipped:
        report.append(f'checkpoint ships {len(shipped)} MTP depth(s) ({style}): replaced '
                      '(--mtp-replace-existing-head)')
    for k in range(depth):
        recipes.update(new_depth(k, cfg, mtp_init, decoder))
        report.append(f'mtp depth {k + 1}: new, ' + (
            'transformer layer copied from the last decoder layer, enorm/hnorm = 1, final norm = '
            'decoder final norm, eh_proj = [0 | I] (zero on the embedding half, identity on the '
            'hidden half)' if mtp_init == 'last_layer' else
            'random initialisation (Megatron init, normal std=init_method_std)'))
    return recipes, report
