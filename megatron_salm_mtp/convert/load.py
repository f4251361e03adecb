"""Fill this rank's SALM chunk from Hugging Face checkpoints, reading only this rank's shards.

``ImportPlan`` gathers, for every tensor of the full TP=1 model, where it comes from (a recipe
over the LLM or the Whisper checkpoint, or nothing: keep the fresh initialisation of the projector
and of randomly initialised MTP heads). ``load_into`` walks the local chunk's state dict, maps each
local name to its full name (PP layer offset, TE's fused-norm keys) and asks the recipe for this
TP rank's shard of it.
"""

import dataclasses
import logging
import os
import re

import torch
from megatron.core import parallel_state

from ..config import SALMConfig
from ..data.progress import Progress
from ..data.tokenizer import build_tokenizer
from . import hf_llm, hf_whisper
from .mtp_init import mtp_recipes, shipped_mtp
from .recipes import Recipe
from .source import TensorSource, read_config

logger = logging.getLogger(__name__)

# TE's fused norm+linear keeps the norm inside the next linear; the local spec maps the same way.
_TE_NORM_KEYS = (('self_attention.linear_qkv.layer_norm_', 'input_layernorm.'),
                 ('mlp.linear_fc1.layer_norm_', 'pre_mlp_layernorm.'))
PROGRESS_SECONDS = 10.0  # rank 0 prints a progress line at most this often (stderr)


def full_name(local_name: str, cfg: SALMConfig, pp_rank: int) -> str:
    """Local state-dict name on PP stage ``pp_rank`` -> name in the TP=1/PP=1 local-spec model."""
    for te_key, local_key in _TE_NORM_KEYS:
        local_name = local_name.replace(te_key, local_key)
    match = re.match(r'(language_model\.decoder\.layers\.)(\d+)(\..*)', local_name)
    if match:
        offset = pp_rank * (cfg.num_layers // cfg.pipeline_model_parallel_size)
        return f'{match.group(1)}{int(match.group(2)) + offset}{match.group(3)}'
    return local_name


@dataclasses.dataclass
class ImportPlan:
    cfg: SALMConfig
    recipes: dict[str, tuple[TensorSource, Recipe]]
    keep_initialised: tuple[str, ...]
    report: list[str]


VOCAB_MULTIPLE = 128


def tokenizer_vocabulary(llm_dir: str, table_rows: int) -> dict:
    """Vocabulary fields for the tokenizer the training run will use (``tokenizer.json`` beside
    the LLM, as ``data.tokenizer.HFTokenizer`` reads it, with its virtual specials such as the
    audio placeholder). The table keeps its rows when they cover the tokenizer (Qwen's 151,936 >
    151,669 + specials); otherwise it grows to the next multiple of 128 with zero rows (Llama 3:
    128,256 + <|audio|>) - divisible by any TP size up to 128, so the checkpoint loads at any layout
    with ``make_vocab_size_divisible_by: null``. Without a tokenizer the table is kept as is."""
    if not os.path.isfile(os.path.join(llm_dir, 'tokenizer.json')):
        return {'vocab_size': table_rows, 'audio_token_id': table_rows - 1}
    tokenizer = build_tokenizer('huggingface', llm_dir)
    rows = table_rows
    if tokenizer.vocab_size > table_rows:
        rows = -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return {'vocab_size': rows, 'audio_token_id': tokenizer.audio_token_id}


def salm_config_from_hf(llm_dir: str, whisper_dir: str | None = None, **overrides) -> SALMConfig:
    """A SALMConfig whose LLM (and encoder) match the Hugging Face checkpoints; ``overrides``
    (parallel sizes, MTP depth, projector...) are applied on top. With MTP shipped in the checkpoint
    and no ``mtp_num_layers`` override, the shipped depth is used."""
    src = TensorSource(llm_dir)
    fields = hf_llm.salm_fields(read_config(llm_dir), src)
    if whisper_dir:
        fields.update(hf_whisper.salm_fields(read_config(whisper_dir)))
    fields.update(tokenizer_vocabulary(llm_dir, fields['vocab_size']))
    fields['seq_length'] = min(int(read_config(llm_dir).get('max_position_embeddings', 4096)), 4096)
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = SALMConfig(**{**fields, **given})
    if 'mtp_num_layers' not in given:
        _, shipped = shipped_mtp(src, cfg)
        cfg = cfg.replace(mtp_num_layers=len(shipped) or None)
    return cfg


def _name(folder: str) -> str:
    """A folder's last component: reports (stored in the checkpoint) carry no machine paths."""
    return os.path.basename(os.path.normpath(folder))


def import_plan(cfg: SALMConfig, llm_dir: str, whisper_dir: str | None = None,
                mtp_init: str = 'last_layer', replace_existing_mtp: bool = False,
                extend_mtp_depth: bool = False) -> ImportPlan:
    llm = TensorSource(llm_dir)
    decoder = hf_llm.llm_recipes(cfg)
    recipes = {name: (llm, r) for name, r in decoder.items()}
    mtp, report = mtp_recipes(llm, cfg, decoder, cfg.mtp_depths, mtp_init, replace_existing_mtp,
                              extend_mtp_depth)
    recipes.update({name: (llm, r) for name, r in mtp.items()})
    keep = ['audio_projector.']
    report.insert(0, f'llm: {_name(llm_dir)} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, '
                     f'vocab {cfg.vocab_size}, tied embeddings: {not cfg.untie_embeddings_and_output_weights})')
    if whisper_dir:
        whisper = TensorSource(whisper_dir)
        recipes.update({n: (whisper, r) for n, r in hf_whisper.encoder_recipes(whisper, cfg).items()})
        report.insert(1, f'audio encoder: {_name(whisper_dir)} ({cfg.encoder_num_layers} layers, '
                         f'width {cfg.encoder_hidden_size})')
    else:
        keep.append('audio_encoder.')
        report.insert(1, 'audio encoder: random initialisation (no --whisper)')
    report.insert(2, 'audio projector: random initialisation')
    if mtp_init == 'random' or extend_mtp_depth:
        keep.append('language_model.mtp.')
    return ImportPlan(cfg, recipes, tuple(keep), report)


def load_into(module, plan: ImportPlan) -> int:
    """Copy this rank's shard of every planned tensor into ``module`` (a SALM chunk, unwrapped);
    returns how many tensors were loaded. Unplanned tensors must be ones to keep initialised."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    params = dict(module.named_parameters())
    planned, missing = [], []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if name.endswith('_extra_state') or tensor is None:
            continue
        full = full_name(name, plan.cfg, pp_rank)
        if full in plan.recipes:
            planned.append((name, full, tensor))
        elif not full.startswith(plan.keep_initialised):
            missing.append(full)
    if missing:
        raise ValueError(f'no source for {len(missing)} tensor(s), e.g. {missing[:5]}')
    progress = None
    if torch.distributed.get_rank() == 0:  # one line for all: the other ranks' shares are of similar size
        progress = Progress("import-hf (rank 0's share)", len(planned), 'tensors', PROGRESS_SECONDS)
    with torch.no_grad():
        for name, full, tensor in planned:
            source, recipe = plan.recipes[full]
            param = params.get(name, tensor)
            dim = param.partition_dim if getattr(param, 'tensor_model_parallel', False) else None
            value = recipe.shard(source, dim, tp_rank, tp_size)
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f'{full}: the checkpoint gives shape {tuple(value.shape)} for this '
                                 f'rank, the model has {tuple(tensor.shape)}')
            tensor.data.copy_(value)
            if progress is not None:
                progress.advance()
    return len(planned)
