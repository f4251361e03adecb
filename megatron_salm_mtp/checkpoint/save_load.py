"""Distributed checkpoints on ``megatron.core.dist_checkpointing``: save, resume, reshard.

One checkpoint is one folder ``iter_0000010`` holding the model, the optimiser, the LR scheduler,
every rank's RNG states and the run's common state (iteration, data-sampler position, counters).
The weights load at any TP/PP/DP layout. The distributed optimizer's state is saved as its own
shards (``dp_reshardable``, Megatron-LM's default: nothing gathered or copied, so a save holds
training briefly) and loads at the same TP and PP; ``--dist-ckpt-optim-fully-reshardable`` saves it
``fully_reshardable`` instead (any layout, at the cost of gathering and copying the whole state on
the training thread). The format is recorded in the checkpoint and loading follows it.

Atomicity: ranks write into ``iter_0000010.tmp-<id>``; when all are done, rank 0 writes the marker,
renames the folder into place, then replaces ``latest_checkpointed_iteration.txt`` (tmp file +
``os.replace``). A crash leaves a ``.tmp-`` folder: loading ignores it. A folder without marker is
skipped when a complete one exists, and an error when none does (``layout.py`` also
names a missing or truncated file of the checkpoint it loads).

dist_checkpointing spawns a helper process (once per process) that re-imports the entry module:
entry points must sit under ``if __name__ == "__main__":``, and an entry module that imports
torch and megatron at its top makes every rank's first save seconds slower.
"""

import json
import logging
import os
import random
import shutil
import time
import uuid

import numpy as np
import torch
import yaml
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.tensor_parallel.random import convert_cuda_rng_state, is_graph_safe_cuda_rng_tracker
from megatron.core.utils import unwrap_model

from ..compat.mcore import async_save_options
from ..model.freeze import check_optimizer_state_covers
from .attach import load_all_but, new_parts, without
from .audio_parts import check_audio_parts
from .layout import (
    CONFIG_FILE,
    MARKER,
    TRACKER,
    CheckpointError,
    checkpoint_dir,
    checkpoint_iterations,
    describe,
    latest_checkpoint_iteration,
)
from .metadata import load_common_state, stored_settings
from .save_strategies import PendingSaves, load_strategy, save_strategy

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DP_RESHARDABLE, FULLY_RESHARDABLE = 'dp_reshardable', 'fully_reshardable'
"""The distributed optimizer's checkpoint formats (Megatron-Core's ``distrib_optim_sharding_type``);
checkpoints that record none were written fully_reshardable."""


def _no_complete_checkpoint(load_dir: str) -> None:
    """None to load from ``load_dir``: fine for an empty folder (or one holding only the ``.tmp-``
    folder of an interrupted first save), an error where checkpoints were (a tracker) or are
    (``iter_*`` folders without the completion marker: damaged, or written by another tool)."""
    if checkpoint_iterations(load_dir) or os.path.isfile(os.path.join(load_dir, TRACKER)):
        raise CheckpointError(f'--load {load_dir}: no complete checkpoint among {describe(load_dir)} '
                              f'(a checkpoint counts once its {MARKER} exists)')


def _layout() -> dict:
    """The parallel layout; RNG states are restored only into the same one."""
    return {'tp': parallel_state.get_tensor_model_parallel_world_size(),
            'pp': parallel_state.get_pipeline_model_parallel_world_size(),
            'dp': parallel_state.get_data_parallel_world_size(with_context_parallel=True),
            'ep': parallel_state.get_expert_model_parallel_world_size()}


def _saved_layout(common: dict) -> dict:
    return {'ep': 1, **common['layout']}  # checkpoints written before expert parallelism


def _check_expert_parallel_change(saved: dict, current: dict, path: str) -> None:
    """Megatron-Core keeps expert parameters in an optimizer of their own only when EP > 1, so
    optimizer state does not load across EP=1 <-> EP>1 (weights do: experts are saved by their
    global index)."""
    if (saved['ep'] > 1) != (current['ep'] > 1):
        raise ValueError(f"{path}: saved at --expert-model-parallel-size {saved['ep']}, loading at "
                         f"{current['ep']}: optimizer state does not carry across EP=1 and EP>1; "
                         "add --no-load-optim to load the weights only")


def _models(model_chunks) -> dict:
    """Unwrapped chunks under Megatron-LM's keys: 'model', or 'model0', 'model1', ... (VPP)."""
    modules = unwrap_model(list(model_chunks))
    return {'model': modules[0]} if len(modules) == 1 else {f'model{i}': m for i, m in enumerate(modules)}


def _model_sharded_state_dict(model_chunks) -> dict:
    # dp_cp_group explicitly: the MTP stage without pre_process raises TypeError without it.
    metadata = {'dp_cp_group': parallel_state.get_data_parallel_group(with_context_parallel=True)}
    return {k: m.sharded_state_dict(metadata=metadata) for k, m in _models(model_chunks).items()}


def _vocabulary(model_chunks) -> dict | None:
    cfg = getattr(unwrap_model(list(model_chunks))[0], 'cfg', None)
    return cfg and {'vocab_size': cfg.vocab_size, 'padded_vocab_size': cfg.padded_vocab_size}


def _check_vocabulary(saved: dict | None, current: dict | None, path: str) -> None:
    """Megatron loads word embeddings with ``allow_shape_mismatch`` (the padding may change), so
    another tokenizer would load silently: refuse it; warn when only the padding differs (the
    padding rows keep their initial values and take part in the softmax, so losses move a bit)."""
    if not (saved and current):
        return
    if saved['vocab_size'] != current['vocab_size']:
        raise ValueError(f"{path}: saved with a vocabulary of {saved['vocab_size']} tokens, the "
                         f"model has {current['vocab_size']}: another tokenizer?")
    if saved['padded_vocab_size'] != current['padded_vocab_size'] and torch.distributed.get_rank() == 0:
        logger.warning('%s: vocabulary padded to %d, the model pads to %d: padding rows not restored '
                       '(pick a --make-vocab-size-divisible-by that pads alike at both TP sizes)',
                       path, saved['padded_vocab_size'], current['padded_vocab_size'])


def _check_optimizer_layout(sharding: str, saved: dict, current: dict, path: str) -> None:
    """dp_reshardable optimizer state is laid out by the TP and PP ranks' parameter buffers."""
    if sharding == DP_RESHARDABLE and (saved['tp'], saved['pp']) != (current['tp'], current['pp']):
        raise ValueError(f"{path}: its optimizer state was saved dp_reshardable at TP={saved['tp']} "
                         f"PP={saved['pp']} and loads only there (this run: TP={current['tp']} "
                         f"PP={current['pp']}); add --no-load-optim to load the weights only, or save "
                         "with --dist-ckpt-optim-fully-reshardable to move optimizer state across layouts")


def _leaf_optimizers(optimizer):
    return list(getattr(optimizer, 'chained_optimizers', None) or [optimizer])


def _distributed(optimizer) -> bool:
    """Whether the optimizer state is sharded over DP (its checkpoint format then matters)."""
    return any(isinstance(opt, DistributedOptimizer) for opt in _leaf_optimizers(optimizer))


def _torch_adam_states(opt):
    """(param, state) of a torch Adam in a Megatron optimiser; [] for TE/Apex (step per group)."""
    inner = getattr(opt, 'optimizer', None)
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return []
    return [(p, inner.state[p]) for group in inner.param_groups for p in group['params']]


def _ensure_optimizer_state(optimizer) -> None:
    """Zero moments and step 0 where Adam has not stepped yet (what its first step creates):
    DistributedOptimizer on torch's Adam reads a common per-parameter ``step`` to save and to
    prepare a load, and asserts on a fresh optimiser."""
    for opt in _leaf_optimizers(optimizer):
        for param, state in _torch_adam_states(opt):
            if 'step' not in state:
                state.setdefault('exp_avg', torch.zeros_like(param))
                state.setdefault('exp_avg_sq', torch.zeros_like(param))
                state['step'] = torch.tensor(0.0)


_STATE_LOADERS = ('load_parameter_state_from_fully_reshardable', 'load_parameter_state_from_dp_reshardable')


def _restore_adam_steps(optimizer) -> None:
    """Load the distributed optimiser's parameter state around torch Adam's ``step``.

    ``DistributedOptimizer.load_state_dict`` sets every ``step`` from the saved param_groups (one
    shared tensor), then copies every state key of each parameter from the checkpoint: the
    fully_reshardable one holds no ``step`` (KeyError in ``_set_main_param_and_optimizer_states``),
    the dp_reshardable one hands back the fresh optimizer's own ``step`` (0), not the saved one.
    Wrapping both loaders on the instance sets the steps aside during the copy and restores them,
    one tensor per parameter (Adam would bump a shared one once per parameter)."""
    for opt in _leaf_optimizers(optimizer):
        if not _torch_adam_states(opt):
            continue
        for name in _STATE_LOADERS:
            if hasattr(opt, name):
                setattr(opt, name, _without_steps(opt, getattr(type(opt), name)))


def _without_steps(opt, load):
    def load_without_step(state_dict):
        steps = {id(p): s.pop('step') for p, s in _torch_adam_states(opt) if 'step' in s}
        try:
            load(opt, state_dict)
        finally:
            for param, state in _torch_adam_states(opt):
                if id(param) in steps:
                    state['step'] = steps[id(param)].detach().clone()
    return load_without_step


def _rng_state() -> ShardedObject:
    """This rank's RNG streams, one shard per (PP, TP, DP) rank."""
    np_state = np.random.get_state()
    state = {'random': random.getstate(),
             # numpy's state as tensor + plain numbers: dist_checkpointing loads with weights_only
             'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])),
             'torch': torch.get_rng_state(),
             'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             # as tensors: a graph-safe tracker (--cuda-graph-impl) holds generators
             'tracker': {name: convert_cuda_rng_state(value, to_graphable=False)
                         for name, value in tensor_parallel.get_cuda_rng_tracker().get_states().items()}}
    sizes = _layout()
    ranks = (parallel_state.get_pipeline_model_parallel_rank(),
             parallel_state.get_tensor_model_parallel_rank(),
             parallel_state.get_data_parallel_rank(with_context_parallel=True))
    return ShardedObject('rng_state', state, (sizes['pp'], sizes['tp'], sizes['dp']), ranks, replica_id=0)


def _set_rng_state(state: dict) -> None:
    random.setstate(state['random'])
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    tracker = tensor_parallel.get_cuda_rng_tracker()
    graph_safe = is_graph_safe_cuda_rng_tracker(tracker)
    tracker.set_states({name: convert_cuda_rng_state(value, to_graphable=graph_safe)
                        for name, value in state['tracker'].items()})


def _sharded_state_dict(model_chunks, optimizer, with_optimizer: bool, with_rng: bool,
                        is_loading: bool, sharding: str) -> dict:
    state = _model_sharded_state_dict(model_chunks)
    if with_optimizer and optimizer is not None:
        _ensure_optimizer_state(optimizer)
        model_sd = state['model'] if len(state) == 1 else state
        state['optimizer'] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                          metadata={'distrib_optim_sharding_type': sharding})
    if with_rng:
        state['rng_state'] = _rng_state()
    return state


def _write_atomic(path: str, text: str) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(save_dir: str, iteration: int, model_chunks, optimizer, scheduler,
                    common_state: dict, resolved_config: dict, pending: PendingSaves | None = None,
                    optimizer_sharding: str = DP_RESHARDABLE) -> str:
    """Save everything needed to resume at ``iteration``; collective. ``common_state`` must be
    identical on all ranks (rank 0's copy is stored); ``optimizer_sharding``: the distributed
    optimizer's format (:data:`DP_RESHARDABLE` or :data:`FULLY_RESHARDABLE`). ``optimizer`` None
    saves neither its state nor the scheduler's (``--no-save-optim``, an import). Returns the final
    checkpoint folder, which exists on return, or with ``pending`` (async) once ``pending``
    finalized the save; the caller finalizes earlier saves first (this one removes unfinished
    ``.tmp-`` folders)."""
    rank = torch.distributed.get_rank()
    final = checkpoint_dir(save_dir, iteration)
    name = [f'{final}.tmp-{uuid.uuid4().hex[:8]}']  # rank 0's name goes to all
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        for stale in os.listdir(save_dir):  # left by an earlier crash mid-save
            if '.tmp-' in stale and stale.startswith('iter_'):
                logger.warning('removing incomplete checkpoint %s', os.path.join(save_dir, stale))
                shutil.rmtree(os.path.join(save_dir, stale), ignore_errors=True)
        os.makedirs(name[0])
    torch.distributed.broadcast_object_list(name, src=0)
    tmp = name[0]
    state = _sharded_state_dict(model_chunks, optimizer, with_optimizer=True, with_rng=True,
                                is_loading=False, sharding=optimizer_sharding)
    saves_optimizer = optimizer is not None
    state.update(iteration=iteration, format_version=FORMAT_VERSION, layout=_layout(),
                 optimizer_sharding=optimizer_sharding, optimizer_saved=saves_optimizer,
                 common=common_state, vocabulary=_vocabulary(model_chunks),
                 scheduler=scheduler.state_dict() if saves_optimizer and scheduler is not None else None)
    request = dist_checkpointing.save(state, tmp, save_strategy(), **(async_save_options() if pending else {}))

    def finalize():  # every rank's shards are written (dist_checkpointing's barrier)
        if rank == 0:
            _finalize(save_dir, tmp, final, iteration, resolved_config)
        torch.distributed.barrier()
        logger.info('saved checkpoint %s', final)

    if pending is None:
        finalize()
    else:
        request.add_finalize_fn(finalize)
        pending.schedule(request, final)
    return final


def _finalize(save_dir: str, tmp: str, final: str, iteration: int, resolved_config: dict) -> None:
    """Rank 0, all shards on disk: config and marker, rename into place, then the tracker."""
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
        yaml.safe_dump(resolved_config or {}, f, sort_keys=True)
    _write_atomic(os.path.join(tmp, MARKER),
                  json.dumps({'iteration': iteration, 'layout': _layout(), 'time': time.time()}))
    if os.path.exists(final):  # e.g. a rolled-back tracker: the new save replaces the old folder
        old = f'{final}.tmp-old-{uuid.uuid4().hex[:8]}'
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(save_dir)
    _write_atomic(os.path.join(save_dir, TRACKER), f'{iteration}\n')
    _fsync_dir(save_dir)


def load_checkpoint(load_dir: str, model_chunks, optimizer, scheduler,
                    load_optimizer: bool = True, load_rng: bool = True,
                    training_mode: str | None = None) -> tuple | None:
    """Load the latest complete checkpoint under ``load_dir`` into the given objects.

    Returns ``(iteration, common_state)``, or None when the folder holds no checkpoint yet;
    CheckpointError when it holds only incomplete ones, or a file of the latest is damaged.
    The checkpoint may come from another TP/PP/DP layout; RNG states are then not restored.
    Without ``load_optimizer`` the optimiser and scheduler keep their fresh state, without
    ``load_rng`` the RNGs theirs (a new run from the weights: ``--finetune``). ``training_mode``:
    the run's, against the saved run's when optimizer state is loaded.
    """
    if not os.path.isdir(load_dir):
        raise FileNotFoundError(f'--load {load_dir!r}: no such directory')
    iteration = latest_checkpoint_iteration(load_dir)
    if iteration is None:
        _no_complete_checkpoint(load_dir)
        return None
    path = checkpoint_dir(load_dir, iteration)
    common = load_common_state(path)
    if common.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path}: format {common.get("format_version")!r}, expected {FORMAT_VERSION}')
    _check_vocabulary(common.get('vocabulary'), _vocabulary(model_chunks), path)
    saved_layout = _saved_layout(common)
    same_layout = saved_layout == _layout()
    if not same_layout and load_rng and torch.distributed.get_rank() == 0:
        logger.warning('checkpoint %s was saved at %s, loading at %s: RNG states are not '
                       'restored', path, saved_layout, _layout())
    with_optimizer = load_optimizer and optimizer is not None
    sharding = common.get('optimizer_sharding', FULLY_RESHARDABLE)
    if with_optimizer and not common.get('optimizer_saved', True):
        raise CheckpointError(f'{path}: holds no optimizer state (saved with --no-save-optim): add '
                              '--no-load-optim to resume its weights with a fresh optimizer, or --finetune '
                              'to start a new run from them')
    if with_optimizer:
        _check_expert_parallel_change(saved_layout, _layout(), path)
        if _distributed(optimizer):
            _check_optimizer_layout(sharding, saved_layout, _layout(), path)
    stored = stored_settings(path)
    if with_optimizer and training_mode and stored.get('training_mode'):
        check_optimizer_state_covers(path, stored['training_mode'], training_mode)
    cfg = unwrap_model(list(model_chunks))[0].cfg
    check_audio_parts(path, stored, cfg)
    attached = new_parts(path, stored, cfg, with_optimizer)
    with_rng = load_rng and same_layout
    state = _sharded_state_dict(model_chunks, optimizer, with_optimizer, with_rng, is_loading=True,
                                sharding=sharding)
    if attached:
        state.update({key: without(state[key], attached) for key in _models(model_chunks)})
    try:
        loaded = dist_checkpointing.load(state, path, load_strategy(path))
    except (EOFError, OSError) as err:  # damaged in a way the size check cannot see
        raise CheckpointError(f'{path}: unreadable ({type(err).__name__}: {err})') from err
    for key, module in _models(model_chunks).items():
        if attached:
            load_all_but(module, loaded[key], attached)
        else:
            module.load_state_dict(loaded[key], strict=True)
    if with_optimizer:
        _restore_adam_steps(optimizer)
        with torch.no_grad():  # dp_reshardable copies into the main params, which are the weights in fp32
            optimizer.load_state_dict(loaded['optimizer'])
        if scheduler is not None and common.get('scheduler') is not None:
            scheduler.load_state_dict(common['scheduler'])
    elif optimizer is not None:
        optimizer.reload_model_params()  # fp32 main params from the loaded weights
    if with_rng:
        _set_rng_state(loaded['rng_state'])
    torch.distributed.barrier()
    return iteration, common['common']
