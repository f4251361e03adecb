"""What a checkpoint says about itself, read without building a model: the run settings saved
beside it (``config.yaml``), its common state (``model_only`` for an import) and the tokenizer its
model decodes with."""

import dataclasses
import logging
import os
import pickle

import yaml
from megatron.core import dist_checkpointing

from ..config import SALMConfig
from ..data.loader import DataConfig
from ..run_config import section_settings
from .layout import (
    COMMON_STATE,
    CONFIG_FILE,
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint_iteration,
    verify_checkpoint_files,
)

HF_TOKENIZER_FILE = 'tokenizer.json'  # what import-hf copies beside the checkpoint

logger = logging.getLogger(__name__)


def stored_settings(path: str) -> dict:
    """The run settings saved beside checkpoint ``path`` (its config.yaml); {} where there are none."""
    stored_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(stored_path):
        return {}
    with open(stored_path) as f:
        return yaml.safe_load(f) or {}


def load_common_state(path: str) -> dict:
    """The checkpoint's common (non-sharded) state, after checking its files."""
    verify_checkpoint_files(path)
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError) as err:  # torch.load of a damaged file
        raise CheckpointError(f'{path}: unreadable {COMMON_STATE} ({type(err).__name__}: {err})') from err


def latest_checkpoint(load_dir: str) -> tuple[int, str]:
    """(iteration, folder) of the latest complete checkpoint under ``load_dir``; FileNotFoundError
    naming ``--load`` when there is none."""
    if not os.path.isdir(load_dir):
        raise FileNotFoundError(f'--load {load_dir}: no such directory')
    iteration = latest_checkpoint_iteration(load_dir)
    if iteration is None:
        raise FileNotFoundError(f'--load {load_dir}: no complete checkpoint in it')
    return iteration, checkpoint_dir(load_dir, iteration)


def latest_run_settings(load_dir: str) -> tuple[int, dict]:
    """(iteration, the run settings saved with it) of the latest complete checkpoint under ``load_dir``."""
    iteration, path = latest_checkpoint(load_dir)
    with open(os.path.join(path, CONFIG_FILE)) as f:
        return iteration, yaml.safe_load(f) or {}


def model_config(stored: dict) -> SALMConfig:
    """The SALMConfig among a checkpoint's saved run settings (the other sections' fields ignored)."""
    return SALMConfig(**section_settings(SALMConfig, stored))


def read_checkpoint_config(load_dir: str) -> SALMConfig:
    """The SALMConfig stored beside the latest checkpoint in ``load_dir`` (config.yaml)."""
    return model_config(latest_run_settings(load_dir)[1])


def is_model_only(load_dir: str) -> bool:
    """Whether the latest checkpoint under ``load_dir`` holds a model only (an import): training
    then loads the weights, keeps its fresh optimizer and starts at iteration 0."""
    iteration = latest_checkpoint_iteration(load_dir)
    if iteration is None:
        return False
    common = load_common_state(checkpoint_dir(load_dir, iteration))
    return bool((common.get('common') or {}).get('model_only'))


def training_vocab_size(tokenizer_vocab: int, load_dir) -> int:
    """The LLM vocabulary a training run uses: the tokenizer's, or the embedding table stored with
    the ``--load`` checkpoint when that is larger (an imported table with unused rows, e.g.
    Qwen's 151,936 rows for 151,669 + specials tokens), so the checkpoint's shapes load."""
    if not load_dir:
        return tokenizer_vocab
    if not os.path.isdir(load_dir) or latest_checkpoint_iteration(load_dir) is None:
        return tokenizer_vocab
    return max(tokenizer_vocab, read_checkpoint_config(load_dir).vocab_size)


def checkpoint_tokenizer(load_dir: str, stored: dict) -> dict:
    """The tokenizer the latest checkpoint under ``load_dir`` decodes with, as the data settings
    ``tokenizer_type`` and ``tokenizer_model`` (``stored``: its config.yaml). A trained checkpoint
    records them as its run was given them. An import records the Hugging Face tokenizer it copied
    beside the checkpoint by a path relative to ``load_dir``, so the folder can move; an import
    written before it recorded one has the copied file only. A recorded file that is gone is a
    CheckpointError naming the checkpoint and the file."""
    kind, model = stored.get('tokenizer_type'), stored.get('tokenizer_model')
    if is_model_only(load_dir):
        if kind is None and os.path.isfile(os.path.join(load_dir, HF_TOKENIZER_FILE)):
            kind, model = 'huggingface', HF_TOKENIZER_FILE
        if model and not os.path.isabs(model):
            model = os.path.join(load_dir, model)
    kind = kind or 'byte'
    if model:
        hf_folder = kind in ('huggingface', 'hf') and os.path.isdir(model)
        file = os.path.join(model, HF_TOKENIZER_FILE) if hf_folder else model
        if not os.path.isfile(file):
            raise CheckpointError(f'--load {load_dir}: the tokenizer file of its model, {file}, is missing')
    return {'tokenizer_type': kind, 'tokenizer_model': model}


def training_tokenizer(data: DataConfig, load_dir: str | None) -> DataConfig:
    """The data settings a training run tokenizes with: those given, or, given no tokenizer (the
    byte default) and starting from an import-hf checkpoint that records one, the import's: its
    embedding table is indexed by that vocabulary, never by bytes."""
    if not load_dir or data.tokenizer_model or data.tokenizer_type != 'byte' or not is_model_only(load_dir):
        return data
    settings = checkpoint_tokenizer(load_dir, latest_run_settings(load_dir)[1])
    if not settings['tokenizer_model']:
        return data
    logger.info('tokenizer: %s %s, the one --load %s was imported with (--tokenizer-model overrides)',
                settings['tokenizer_type'], settings['tokenizer_model'], load_dir)
    return dataclasses.replace(data, **settings)
