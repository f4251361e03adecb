"""Helpers for the multi-process tests: tiny configs, synthetic speech batches, layout runs."""

import dataclasses
import json
import os
import subprocess

import torch

from megatron_salm_mtp.config import SALMConfig
from megatron_salm_mtp.data.batching import pad_targets
from megatron_salm_mtp.data.frames import audio_tokens, encoder_frames
from tests.support.process import child_env, rank_launcher, support_script

HARNESS = support_script('harness.py')
AUDIO_ID = 259
GRAD_RTOL = 2e-5  # fp32: relative to the largest entry of each gradient


def tiny_config(**overrides) -> SALMConfig:
    base = dict(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                num_query_groups=2, vocab_size=264, make_vocab_size_divisible_by=1, seq_length=48,
                mtp_num_layers=2, mtp_loss_scaling_factor=0.3, num_mel_bins=16,
                encoder_num_layers=1, encoder_hidden_size=32, encoder_num_attention_heads=4,
                encoder_max_source_positions=64, audio_token_id=AUDIO_ID, qk_layernorm=True)
    base.update(overrides)
    return SALMConfig(**base)


def speech_batch(cfg: SALMConfig, num_samples: int, seed: int, answer_lengths=None) -> dict:
    """Prompt text, one utterance's placeholders, optional text, answer, padding; answers vary in
    length so that per-microbatch averaging would weight tokens unequally."""
    gen = torch.Generator().manual_seed(seed)
    s = cfg.seq_length
    tokens = torch.randint(0, 250, (num_samples, s + 1), generator=gen)
    answer = torch.zeros(num_samples, s + 1)
    features, lengths = [], []
    for i in range(num_samples):
        frames = int(torch.randint(24, 72, (1,), generator=gen))
        n = audio_tokens(frames, cfg.audio_frame_stack)
        start = int(torch.randint(1, 4, (1,), generator=gen))
        tokens[i, start:start + n] = cfg.audio_token_id
        gap = i % 3  # 0: the answer starts right after the audio (placeholder paths matter)
        length = answer_lengths[i] if answer_lengths else int(torch.randint(1, 14, (1,), generator=gen))
        first = start + n + gap
        answer[i, first:first + length] = 1
        tokens[i, first + length:] = 256  # padding id
        features.append(torch.randn(cfg.num_mel_bins, frames, generator=gen))
        lengths.append(frames)
    padded = torch.zeros(num_samples, cfg.num_mel_bins, max(lengths))
    for i, feat in enumerate(features):
        padded[i, :, : feat.shape[1]] = feat
    return {'tokens': tokens[:, :-1].contiguous(), 'labels': tokens[:, 1:].contiguous(),
            'loss_mask': answer[:, 1:].contiguous(),
            'position_ids': torch.arange(s).repeat(num_samples, 1),
            'audio_features': padded, 'audio_feature_lengths': torch.tensor(lengths),
            **ctc_targets(lengths, seed)}


def pack_rows(batch: dict, rows, seq_length: int) -> dict:
    """The utterances of a padded ``speech_batch`` packed into ``rows`` (lists of its row indices),
    each utterance up to its last supervised position, as ``data.packing`` lays out a row."""
    tokens = torch.full((len(rows), seq_length), 256)
    labels, loss_mask = tokens.clone(), torch.zeros(len(rows), seq_length)
    positions, cu_seqlens, order = torch.zeros_like(tokens), [], []
    for r, members in enumerate(rows):
        at, starts = 0, []
        for u in members:
            n = int(batch['loss_mask'][u].nonzero().max()) + 1
            for key, out in (('tokens', tokens), ('labels', labels), ('loss_mask', loss_mask)):
                out[r, at:at + n] = batch[key][u, :n]
            positions[r, at:at + n] = torch.arange(n)
            starts.append(at)
            at += n
        assert at <= seq_length, f'row {r} needs {at} positions'
        positions[r, at:] = torch.arange(seq_length - at)
        cu_seqlens.append(starts + [seq_length] if at == seq_length else starts + [at, seq_length])
        order.extend(members)
    width = max(map(len, cu_seqlens))
    audio = {key: batch[key][order] for key in ('audio_features', 'audio_feature_lengths', 'ctc_targets',
                                                'ctc_target_lengths')}
    return {'tokens': tokens, 'labels': labels, 'loss_mask': loss_mask, 'position_ids': positions, **audio,
            'cu_seqlens': torch.tensor([c + [seq_length] * (width - len(c)) for c in cu_seqlens])}


def ctc_targets(mel_lengths, seed: int) -> dict:
    """CTC targets per utterance, drawn from few ids so that repeats are common. Sample 1 has
    none; sample 2 one longer than its frames; sample 3 fits in ids but not with the blanks its
    repeats need: both are infeasible, so the CTC term must leave them out."""
    gen = torch.Generator().manual_seed(seed + 1)  # apart from the stream of the batch itself
    targets = []
    for i, mel in enumerate(mel_lengths):
        frames = encoder_frames(mel)
        if i == 1:
            target = []
        elif i == 2:
            target = torch.randint(0, 250, (frames + 2,), generator=gen).tolist()
        elif i == 3:
            target = [7] * frames
        else:
            target = torch.randint(3, 6, (int(torch.randint(1, frames // 2, (1,), generator=gen)),),
                                   generator=gen).tolist()
        targets.append(target)
    padded, lengths = pad_targets(targets)
    return {'ctc_targets': padded, 'ctc_target_lengths': lengths}


def _run(args, nproc: int, timeout: int = 600):
    launcher, rank_env = rank_launcher(nproc)
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    cmd = launcher + [HARNESS] + args
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")


def write_config(cfg: SALMConfig, path: str) -> str:
    with open(path, 'w') as f:
        json.dump(dataclasses.asdict(cfg), f)
    return path


def init_weights(cfg: SALMConfig, workdir: str) -> dict:
    base = cfg.with_single_device_layout()
    out = os.path.join(workdir, 'weights.pt')
    _run(['init', '--config', write_config(base, os.path.join(workdir, 'base.json')), '--out', out], 1)
    return torch.load(out)


def run_layout(cfg: SALMConfig, weights_path: str, batch_path: str, workdir: str,
               nproc: int, microbatches: int, training_mode: str = 'joint', packed_format=None):
    """Run one global batch on ``nproc`` ranks; returns (main loss, full gradients by name, the
    MTP stage's embedding gradient copies, each rank's record)."""
    os.makedirs(workdir, exist_ok=True)
    config_path = write_config(cfg, os.path.join(workdir, 'config.json'))
    _run(['grads', '--config', config_path, '--weights', weights_path, '--batch', batch_path,
          '--microbatches', str(microbatches), '--out', workdir, '--training-mode', training_mode]
         + (['--packed-format', packed_format] if packed_format else []), nproc)
    return _layout_results(workdir, nproc)


def run_plan(base: SALMConfig, layouts, batch_path: str, workdir: str, nproc: int):
    """One launch of ``nproc`` ranks: the weights of ``base`` (at TP=1/PP=1), then one global batch
    through each of ``layouts`` ({name: (config, microbatches, packed format)}). Returns (the
    weights, {name: what ``run_layout`` returns})."""
    plan = {'init': write_config(base.with_single_device_layout(), os.path.join(workdir, 'base.json')),
            'batch': batch_path, 'layouts': []}
    for name, (cfg, microbatches, packed_format) in layouts.items():
        plan['layouts'].append({'config': write_config(cfg, os.path.join(workdir, f'{name}.json')), 'out': name,
                                'microbatches': microbatches, 'packed_format': packed_format})
    with open(os.path.join(workdir, 'plan.json'), 'w') as f:
        json.dump(plan, f)
    _run(['plan', '--plan', os.path.join(workdir, 'plan.json'), '--out', workdir], nproc)
    return (torch.load(os.path.join(workdir, 'weights.pt')),
            {name: _layout_results(os.path.join(workdir, name), nproc) for name in layouts})


def _layout_results(workdir: str, nproc: int):
    from tests.support.harness import merge_shards
    ranks = [torch.load(os.path.join(workdir, f'rank{r}.pt')) for r in range(nproc)]
    losses = [r['loss'] for r in ranks if r['loss'] == r['loss']]
    grads, copies = {}, {}
    for pp_rank in sorted({r['pp_rank'] for r in ranks}):
        stage = sorted((r for r in ranks if r['dp_rank'] == 0 and r['pp_rank'] == pp_rank),
                       key=lambda r: r['tp_rank'])
        for name, (_, spec) in stage[0]['grads'].items():
            if spec['expert']:
                continue
            merged = merge_shards([r['grads'][name][0] for r in stage], spec)
            if name in grads:  # the word embedding lives on the first and the MTP stage
                copies[name] = merged
            else:
                grads[name] = merged
        grads.update(_expert_grads([r for r in ranks if r['pp_rank'] == pp_rank]))
    return losses[0], grads, copies, ranks


def _expert_grads(stage_ranks) -> dict:
    """Full expert gradients of one PP stage: each EP rank holds its own experts, split over the
    expert TP group; expert-DP replicas hold the same reduced gradient (the first one is read)."""
    from tests.support.harness import merge_shards
    grads = {}
    for ep_rank in sorted({r['ep_rank'] for r in stage_ranks}):
        holders = sorted((r for r in stage_ranks if r['ep_rank'] == ep_rank and r['expert_dp_rank'] == 0),
                         key=lambda r: r['expert_tp_rank'])
        for name, (_, spec) in holders[0]['grads'].items():
            if spec['expert']:
                grads[name] = merge_shards([r['grads'][name][0] for r in holders], spec)
    return grads


def reference_grads(cfg: SALMConfig, weights: dict, batch: dict):
    """Objective and gradients of the plain-torch reference over the whole global batch."""
    from tests.support.reference import combine, salm_objective
    leaves = {k: v.clone().requires_grad_(not k.endswith('embed_positions')) for k, v in weights.items()}
    loss, totals = combine([salm_objective(leaves, cfg, batch)], cfg)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return loss.item(), totals, grads


def assert_grads_match(reference: dict, parallel: dict):
    assert set(reference) == set(parallel), set(reference) ^ set(parallel)
    for name, expected in reference.items():
        scale = expected.abs().max().item()
        assert scale > 0, f'{name}: reference gradient is zero, the test would not see an error'
        err = (parallel[name].float() - expected).abs().max().item() / scale
        assert err < GRAD_RTOL, f'{name}: relative error {err:.2e}'
