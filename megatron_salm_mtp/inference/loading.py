"""A checkpoint saved at any TP/PP layout, loaded as one TP=1, PP=1 model for decoding.

The model is built with the portable local spec whatever the training used: its checkpoint keys
are Transformer Engine's (``specs.py`` maps them), and its SDPA core attention honours the
per-position key mask of the KV cache (``kv_cache.py``).
"""

import dataclasses
from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from ..checkpoint.metadata import checkpoint_tokenizer, latest_run_settings, model_config
from ..checkpoint.save_load import load_checkpoint
from ..config import ConfigError, SALMConfig
from ..data.loader import DataConfig
from ..data.tokenizer import Tokenizer
from ..model.provider import provide_salm
from ..model.specs import LOCAL
from ..parallel.setup import init_distributed, set_seed
from ..run_config import SHARED_WITH_DATA


@dataclass
class LoadedModel:
    model: torch.nn.Module  # the SALM, eval mode
    cfg: SALMConfig  # as built (TP=1, PP=1, local spec)
    data: DataConfig  # the run's tokenizer, template and feature settings
    tokenizer: Tokenizer
    iteration: int
    training_mode: str  # the run's --training-mode; encoder_ctc: stage 1, whose LLM never trained


def _init_one_process() -> None:
    """A one-rank process group and TP=1/PP=1 parallel state, unless the caller made them."""
    init_distributed()  # no-op when the caller made the group
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
        set_seed(1234)
    sizes = (parallel_state.get_tensor_model_parallel_world_size(),
             parallel_state.get_pipeline_model_parallel_world_size())
    if sizes != (1, 1):
        raise RuntimeError(f'decoding runs at TP=1, PP=1; this process has TP, PP = {sizes}')


def build_for_inference(cfg: SALMConfig):
    """(SALM of ``cfg`` laid out for one device, randomly initialised, in eval mode on this
    device; the config it was built with)."""
    cfg = cfg.with_single_device_layout().replace(transformer_impl=LOCAL)
    _init_one_process()
    model = provide_salm(cfg, LOCAL)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model.eval(), cfg


def inference_data_config(stored: dict, checkpoint: str) -> DataConfig:
    """The data settings a checkpoint's ``config.yaml`` records, for decoding: one utterance per row
    (decoding never packs; a checkpoint saved before packing existed records unpacked settings, such
    as --no-pad-to-seq-length, that the packing default would refuse). The fields the model owns (mel
    bins, frame stacking...) come from its model settings: an import records no data settings, and
    features made with the defaults would not fit a 128-bin or differently stacked model."""
    model = model_config(stored)
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    settings = {k: v for k, v in stored.items() if k in data_fields}
    for name, (section, owner) in SHARED_WITH_DATA.items():
        if section != 'model':
            continue
        value = getattr(model, owner)
        if settings.get(name, value) != value:
            raise ConfigError(f'{checkpoint}: config.yaml records {name} {settings[name]!r} for the data but '
                              f'{owner} {value!r} for the model; the two must agree')
        settings[name] = value
    return DataConfig(**dict(settings, pack_sequences=False))


def load_for_inference(load_dir: str) -> LoadedModel:
    """The latest complete checkpoint under ``load_dir`` as a TP=1/PP=1 SALM on this device, with
    the tokenizer its model decodes with (an import's, copied beside it, included)."""
    iteration, stored = latest_run_settings(load_dir)
    stored = dict(stored, **checkpoint_tokenizer(load_dir, stored))
    data = inference_data_config(stored, f'--load {load_dir} (iteration {iteration})')
    model, cfg = build_for_inference(model_config(stored))
    load_checkpoint(load_dir, [model], None, None, load_optimizer=False)
    return LoadedModel(model, cfg, data, data.make_tokenizer(), iteration, stored.get('training_mode', 'joint'))
