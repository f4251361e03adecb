"""``import-hf``: Hugging Face checkpoints -> a plugin checkpoint that ``train --load`` and
``generate --load`` read, at any TP/PP layout (dist_checkpointing reshards on load).

Each rank builds its own SALM chunk for the requested layout and reads only its shards from the
safetensors files, then all ranks write one distributed checkpoint (``checkpoint/save_load.py``)
holding the model only, marked ``model_only`` in its common state: training starts from it at
iteration 0 with a fresh optimizer. The LLM's tokenizer files are copied beside it and its
config.yaml records them (``tokenizer_model`` relative to the checkpoint folder, so the folder can
move): ``evaluate``, ``transcribe`` and ``generate`` decode with them.
"""

import dataclasses
import logging
import os
import shutil

import torch
import yaml

from ..checkpoint.metadata import HF_TOKENIZER_FILE
from ..checkpoint.run_folders import claim_checkpoint_folders
from ..checkpoint.save_load import save_checkpoint
from ..config import ParallelConfig, SALMConfig
from ..flags import DERIVED
from ..parallel.setup import build_model, init_distributed, init_model_parallel, release_distributed
from .load import import_plan, load_into

logger = logging.getLogger(__name__)

MODEL_CONFIG = 'salm_model.yaml'
COPIED_FILES = (HF_TOKENIZER_FILE, 'tokenizer_config.json', 'generation_config.json')


def model_yaml(cfg: SALMConfig) -> str:
    """The model flags of an imported checkpoint, as a ``--config`` file for ``train`` (derived
    and parallel fields left out: the tokenizer and the launch decide those)."""
    parallel = {f.name for f in dataclasses.fields(ParallelConfig)}
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in DERIVED and k not in parallel}
    return yaml.safe_dump(fields, sort_keys=True)


def imported_tokenizer(llm_dir: str) -> dict:
    """The tokenizer settings an import records: the LLM's ``tokenizer.json`` as copied beside the
    checkpoint, by its name there; the byte tokenizer where the LLM folder has none."""
    if not os.path.isfile(os.path.join(llm_dir, HF_TOKENIZER_FILE)):
        return {'tokenizer_type': 'byte', 'tokenizer_model': None}
    return {'tokenizer_type': 'huggingface', 'tokenizer_model': HF_TOKENIZER_FILE}


def run_import(cfg: SALMConfig, llm_dir: str, whisper_dir, out: str, mtp_init: str,
               replace_existing_mtp: bool, extend_mtp_depth: bool, seed: int = 1234,
               overwrite: bool = False) -> None:
    init_distributed()
    claim_checkpoint_folders(None, out, overwrite, '--out', '--overwrite')  # locked until this process exits
    init_model_parallel(cfg, seed)
    plan = import_plan(cfg, llm_dir, whisper_dir, mtp_init, replace_existing_mtp, extend_mtp_depth)
    model = build_model(cfg, wrap_ddp=False)
    loaded = load_into(model[0], plan)
    rank = torch.distributed.get_rank()
    common = {'model_only': True, 'import_report': plan.report}
    tokenizer = imported_tokenizer(llm_dir)
    if rank == 0:  # before the save marks the checkpoint complete
        for name in COPIED_FILES:
            if os.path.isfile(os.path.join(llm_dir, name)):
                shutil.copy(os.path.join(llm_dir, name), os.path.join(out, name))
    path = save_checkpoint(out, 0, model, None, None, common, dict(dataclasses.asdict(cfg), **tokenizer))
    if rank == 0:
        with open(os.path.join(out, MODEL_CONFIG), 'w') as f:
            f.write(model_yaml(cfg))
        for line in plan.report:
            print(line, flush=True)
        takes = ' (training takes its tokenizer from it)' if tokenizer['tokenizer_model'] else ''
        print(f'wrote {path} (layout TP={cfg.tensor_model_parallel_size} '
              f'PP={cfg.pipeline_model_parallel_size}; {loaded} tensors loaded on rank 0); '
              f'train with --load {out} --config {os.path.join(out, MODEL_CONFIG)}{takes}', flush=True)
    torch.distributed.barrier()
    release_distributed()
