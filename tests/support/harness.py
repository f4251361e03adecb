"""Runs the real Megatron-Core SALM in one parallel layout (one process per rank, gloo) for tests.

    python tests/support/harness.py init  --config C.json --out W.pt             (world size 1)
    torchrun --nproc-per-node N tests/support/harness.py grads --config C.json --weights W.pt
             --batch B.pt --microbatches M --out DIR [--training-mode MODE]
    torchrun --nproc-per-node N tests/support/harness.py plan --plan P.json --out DIR

``init`` writes full weights under TP=1/PP=1 names, perturbed so norms and biases are not trivial.
``grads`` loads each rank's shard of those weights, runs one global batch (DP ranks take
contiguous slices, each split into M microbatches) through the schedules and finalize_model_grads,
and writes each rank's gradient shards with what is needed to reassemble them. With a
``--training-mode`` other than joint, the model is frozen as the trainer freezes it, and each rank
also records which parameters have a DDP gradient buffer and optimizer state. ``plan`` does in one
launch what ``init`` then several ``grads`` runs would (each launch costs seconds of imports): it
writes the weights of ``P.json``'s ``init`` config to ``DIR/weights.pt``, then runs each of its
``layouts`` (``{"config": C.json, "microbatches": M, "packed_format": F, "out": SUBDIR}``) in turn,
tearing Megatron-Core's parallel state down between them.
"""

import argparse
import json
import os
import re

import torch
from megatron.core import parallel_state

from megatron_salm_mtp.config import SALMConfig, TrainConfig
from megatron_salm_mtp.model.freeze import apply_training_mode
from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel
from megatron_salm_mtp.training.optim import build_optimizer
from megatron_salm_mtp.training.step import ctc_metrics, forward_backward, mtp_metrics
from tests.support.freeze_harness import optimizer_state_params

GATED_FC1 = re.compile(r'language_model\.(decoder\.layers|mtp\.layers\.\d+\.transformer_layer).*linear_fc1\.weight$')


LOCAL_EXPERT = re.compile(r'(.*\.local_experts\.)(\d+)(\..*)')


def global_name(local_name: str, cfg: SALMConfig, vp_stage: int = 0) -> str:
    """Local parameter name in this PP stage's chunk ``vp_stage`` (and EP rank) -> name in the
    TP=1/PP=1/EP=1 model. Interleaved order: chunk v of PP rank p holds the (v x PP + p)-th slice
    of the decoder layers."""
    pp = cfg.pipeline_model_parallel_size
    per_chunk = cfg.num_layers // (pp * (cfg.virtual_pipeline_size or 1))
    offset = (vp_stage * pp + parallel_state.get_pipeline_model_parallel_rank()) * per_chunk
    match = re.match(r'(language_model\.decoder\.layers\.)(\d+)(\..*)', local_name)
    if match:
        return f'{match.group(1)}{int(match.group(2)) + offset}{match.group(3)}'
    match = LOCAL_EXPERT.match(local_name)
    if match:
        first = parallel_state.get_expert_model_parallel_rank() * (
            cfg.num_experts // cfg.expert_model_parallel_size)
        return f'{match.group(1)}{int(match.group(2)) + first}{match.group(3)}'
    return local_name


def shard_spec(name: str, param) -> dict:
    expert = bool(LOCAL_EXPERT.match(name))  # split over the expert TP group, held by one EP rank
    if not getattr(param, 'tensor_model_parallel', False):
        return {'dim': None, 'gated': False, 'expert': expert}
    return {'dim': param.partition_dim, 'gated': bool(GATED_FC1.match(name)), 'expert': expert}


def take_shard(full: torch.Tensor, spec: dict, rank: int, size: int) -> torch.Tensor:
    if spec['dim'] is None:
        return full
    if spec['gated']:  # Megatron keeps [gate_shard; up_shard] on each TP rank
        return torch.cat([half.chunk(size, dim=0)[rank] for half in full.chunk(2, dim=0)])
    return full.chunk(size, dim=spec['dim'])[rank]


def merge_shards(shards, spec: dict) -> torch.Tensor:
    if spec['dim'] is None:
        return shards[0]
    if spec['gated']:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
    return torch.cat(shards, dim=spec['dim'])


def load_config(path: str) -> SALMConfig:
    with open(path) as f:
        return SALMConfig(**json.load(f))


def cmd_init(args):
    init_distributed()
    write_weights(load_config(args.config), args.seed, args.out)


def write_weights(cfg: SALMConfig, seed: int, out: str) -> None:
    """Full TP=1/PP=1 weights of ``cfg`` (world of any size: rank 0 writes them)."""
    init_model_parallel(cfg, seed=seed)
    model = build_model(cfg, wrap_ddp=False)[0]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith('_extra_state'):
            continue
        value = tensor.detach().float().cpu()
        if name.endswith('embed_positions'):
            state[name] = value
            continue
        scale = 0.1 if ('norm' in name or name.endswith('bias')) else 0.02
        state[name] = value + scale * torch.randn(value.shape, generator=gen)
    if torch.distributed.get_rank() == 0:
        torch.save(state, out)
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()


AUDIO_ROWS = ('audio_features', 'audio_feature_lengths', 'ctc_targets', 'ctc_target_lengths')


def _split(batch: dict, start: int, stop: int, audio_id: int) -> dict:
    """Rows [start, stop) of a batch, with their audios: one per placeholder run, in row-major
    order (a packed row holds several; utterances here never start with a placeholder)."""
    part = {key: value[start:stop] for key, value in batch.items() if key not in AUDIO_ROWS}
    audio = batch['tokens'] == audio_id
    run_starts = audio & ~torch.nn.functional.pad(audio[:, :-1], (1, 0))
    offsets = [0] + run_starts.sum(1).cumsum(0).tolist()
    first, last = offsets[start], offsets[stop]
    part.update({key: batch[key][first:last] for key in AUDIO_ROWS if key in batch})
    part['audio_features'] = part['audio_features'][..., : int(part['audio_feature_lengths'].max())]
    return part


def cmd_grads(args):
    init_distributed()
    run_grads(load_config(args.config), args.weights, args.batch, args.microbatches, args.out, args.seed,
              args.training_mode, args.packed_format)
    torch.distributed.destroy_process_group()


def cmd_plan(args):
    with open(args.plan) as f:
        plan = json.load(f)
    init_distributed()
    weights = os.path.join(args.out, 'weights.pt')
    write_weights(load_config(plan['init']), args.seed, weights)
    for layout in plan['layouts']:
        out = os.path.join(args.out, layout['out'])
        os.makedirs(out, exist_ok=True)
        run_grads(load_config(layout['config']), weights, plan['batch'], layout['microbatches'], out, args.seed,
                  layout.get('training_mode', 'joint'), layout.get('packed_format'))
    torch.distributed.destroy_process_group()


def run_grads(cfg: SALMConfig, weights: str, batch_path: str, num_microbatches: int, out: str, seed: int,
              mode: str = 'joint', packed_format=None) -> None:
    init_model_parallel(cfg, seed=seed)
    model = build_model(cfg, before_wrap=lambda chunk: apply_training_mode(chunk, mode))
    full = torch.load(weights)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    expert_tp_rank = parallel_state.get_expert_tensor_parallel_rank()
    expert_tp_size = parallel_state.get_expert_tensor_parallel_world_size()
    chunks = [chunk.module for chunk in model]  # one per virtual pipeline stage
    for module in chunks:
        if packed_format:  # the TE spec's THD layout, through the portable attention
            module.packed_format = packed_format
    specs = {}  # by global name
    for vp_stage, module in enumerate(chunks):
        params = dict(module.named_parameters())
        local_state = {}
        for name, tensor in module.state_dict().items():
            if name.endswith('_extra_state'):
                continue
            spec = shard_spec(name, params.get(name, tensor))
            specs[global_name(name, cfg, vp_stage)] = spec
            rank, size = (expert_tp_rank, expert_tp_size) if spec['expert'] else (tp_rank, tp_size)
            local_state[name] = take_shard(full[global_name(name, cfg, vp_stage)], spec, rank, size)
        missing, unexpected = module.load_state_dict(local_state, strict=False)
        assert not [k for k in missing if not k.endswith('_extra_state')], missing
    batch = torch.load(batch_path)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    per_rank = batch['tokens'].shape[0] // dp_size
    mine = _split(batch, dp_rank * per_rank, (dp_rank + 1) * per_rank, cfg.audio_token_id)
    size = per_rank // num_microbatches
    microbatches = [_split(mine, i * size, (i + 1) * size, cfg.audio_token_id)
                    for i in range(num_microbatches)]
    for chunk in model:
        chunk.zero_grad_buffer()
    loss = forward_backward(model, microbatches, cfg, training_mode=mode).mean
    grads = {}
    for vp_stage, module in enumerate(chunks):
        for local_name, p in module.named_parameters():
            if p.requires_grad:
                name = global_name(local_name, cfg, vp_stage)
                grads[name] = (p.main_grad.detach().float().cpu(), specs[name])
    stats = next((m.language_model.mtp_stats for m in chunks if m.language_model.mtp_stats is not None), None)
    stats = stats.values.cpu() if stats is not None else None
    metrics = mtp_metrics(model)  # every stage calls it, as the training loop does
    metrics.update(ctc_metrics(model, cfg))
    frozen_state = _frozen_state(model, chunks, cfg) if mode != 'joint' else None
    rank = torch.distributed.get_rank()
    torch.save({'tp_rank': tp_rank, 'dp_rank': dp_rank,
                'pp_rank': parallel_state.get_pipeline_model_parallel_rank(), 'loss': loss,
                'ep_rank': parallel_state.get_expert_model_parallel_rank(),
                'expert_tp_rank': expert_tp_rank,
                'expert_dp_rank': parallel_state.get_expert_data_parallel_rank(),
                'grads': grads, 'mtp_stats': stats, 'metrics': metrics, 'frozen_state': frozen_state},
               os.path.join(out, f'rank{rank}.pt'))
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()


def _frozen_state(model, chunks, cfg) -> dict:
    """Global names of the parameters with a DDP gradient buffer and with optimizer state."""
    optimizer, _ = build_optimizer(model, TrainConfig(train_manifest='unused'), cfg)
    held = optimizer_state_params(optimizer)
    named = [(global_name(n, cfg, v), p) for v, m in enumerate(chunks) for n, p in m.named_parameters()]
    return {'grad_buffer': sorted(n for n, p in named if hasattr(p, 'main_grad')),
            'in_optimizer': sorted(n for n, p in named if id(p) in held),
            'all': sorted(n for n, _ in named)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('mode', choices=['init', 'grads', 'plan'])
    parser.add_argument('--config')
    parser.add_argument('--weights')
    parser.add_argument('--batch')
    parser.add_argument('--microbatches', type=int, default=1)
    parser.add_argument('--seed', type=int, default=1234)
    parser.add_argument('--training-mode', default='joint')
    parser.add_argument('--packed-format', choices=['mask', 'thd'])
    parser.add_argument('--plan', help='plan mode: its JSON (see above)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    {'init': cmd_init, 'grads': cmd_grads, 'plan': cmd_plan}[args.mode](args)


if __name__ == '__main__':
    main()
