"""An independent single-process SALM in plain torch: the ground truth of the parallel tests.

It reads full (TP=1, PP=1) weights by their Megatron-Core names, recomputes every layer from the
math (no Megatron module, no MTP autoscaler hook), and returns the objective of docs/design.md with the
DeepSeek-V3 MTP terms written by direct indexing into the token sequence rather than by rolling:

    L = sum_i CE_main(i) / N_main + lambda / D * sum_k sum_i CE_k(i) / N_k + w * sum_u CTC(u) / N_ctc

The CTC term scores each utterance's encoder output (50 Hz, before stacking) through the linear
CTC head (vocabulary + a blank, the last id) against its target ids, one utterance at a time;
N_ctc counts the target ids of the utterances that enter. An utterance whose target cannot be
aligned is recognised by its infinite loss and left out (counted as infeasible). With an
intermediate CTC layer k (InterCTC), sum CTC(u) is (1 - lambda) x that of the last layer + lambda x
that of layer k's output through the encoder's final LayerNorm. With the layer mix, the projector
reads sum_l softmax(weights)_l x layer l's output through that LayerNorm.
"""

import math

import torch
import torch.nn.functional as F


def _norm(x, w, prefix, eps, rms):
    if rms:
        return F.rms_norm(x, (x.shape[-1],), w[prefix + 'weight'], eps)
    return F.layer_norm(x, (x.shape[-1],), w[prefix + 'weight'], w[prefix + 'bias'], eps)


def _rope(x, base):
    """Non-interleaved rotary embedding over positions 0..s-1; x is [b, heads, s, dim]."""
    dim, seq = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    half1, half2 = x[..., : dim // 2], x[..., dim // 2:]
    rotated = torch.cat([-half2, half1], dim=-1)
    return x * angles.cos() + rotated * angles.sin()


def _attention(x, w, p, heads, groups, head_dim, causal, key_valid=None, qk_norm=None, rope_base=None):
    """x [b, s, h]; Megatron's fused QKV layout: per group, its query heads then one key, one value."""
    b, s, _ = x.shape
    qkv = x @ w[p + 'linear_qkv.weight'].t()
    if p + 'linear_qkv.bias' in w:
        qkv = qkv + w[p + 'linear_qkv.bias']
    per_group = heads // groups
    qkv = qkv.view(b, s, groups, (per_group + 2) * head_dim)
    q = qkv[..., : per_group * head_dim].reshape(b, s, heads, head_dim)
    k = qkv[..., per_group * head_dim: (per_group + 1) * head_dim]
    v = qkv[..., (per_group + 1) * head_dim:]
    if qk_norm is not None:
        q = F.rms_norm(q, (head_dim,), w[p + 'q_layernorm.weight'], qk_norm)
        k = F.rms_norm(k, (head_dim,), w[p + 'k_layernorm.weight'], qk_norm)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads|groups, s, dim]
    if rope_base is not None:
        q, k = _rope(q, rope_base), _rope(k, rope_base)
    k = k.repeat_interleave(per_group, dim=1)
    v = v.repeat_interleave(per_group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if causal:
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float('-inf'))
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float('-inf'))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, heads * head_dim)
    out = out @ w[p + 'linear_proj.weight'].t()
    return out + w[p + 'linear_proj.bias'] if p + 'linear_proj.bias' in w else out


def _mlp(x, w, p, gated):
    y = x @ w[p + 'linear_fc1.weight'].t()
    if p + 'linear_fc1.bias' in w:
        y = y + w[p + 'linear_fc1.bias']
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    else:
        y = F.gelu(y)
    y = y @ w[p + 'linear_fc2.weight'].t()
    return y + w[p + 'linear_fc2.bias'] if p + 'linear_fc2.bias' in w else y


def _moe(x, w, p, cfg):
    """Top-k mixture of SwiGLU experts, routed as core's top-k router with no capacity limit: the
    softmax of the k largest router logits (for k=1: the top probability of a softmax over all
    experts) weights each chosen expert's output. Every expert runs on every token here; a token's
    weight for an expert it was not routed to is zero, so neither its output nor its gradient counts."""
    logits = x @ w[p + 'router.weight'].t()
    k = cfg.moe_router_topk
    if k == 1:
        top, chosen = logits.softmax(-1).topk(k, dim=-1)
    else:
        top, chosen = logits.topk(k, dim=-1)
        top = top.softmax(-1)
    out = torch.zeros_like(x)
    for expert in range(cfg.num_experts):
        weight = (top * (chosen == expert)).sum(-1, keepdim=True)
        out = out + weight * _mlp(x, w, f'{p}experts.local_experts.{expert}.', gated=True)
    return out


def _llm_layer(x, w, p, cfg, attention=True, mlp=True, moe=False):
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads
    head_dim = cfg.kv_channels or cfg.hidden_size // heads
    eps = cfg.norm_epsilon
    if attention:
        h = _norm(x, w, p + 'input_layernorm.', eps, rms=True)
        x = x + _attention(h, w, p + 'self_attention.', heads, groups, head_dim, causal=True,
                           qk_norm=eps if cfg.qk_layernorm else None, rope_base=cfg.rotary_base)
    if mlp or moe:
        h = _norm(x, w, p + 'pre_mlp_layernorm.', eps, rms=True)
        x = x + (_moe(h, w, p + 'mlp.', cfg) if moe else _mlp(h, w, p + 'mlp.', gated=True))
    return x


def _convolution_module(x, w, p, valid):
    """The Conformer branch (model/conformer.py) of normed states [n, T, d], padded frames zeroed
    before the depthwise convolution."""
    width = x.shape[-1]
    y = F.glu(x @ w[p + 'pointwise_in.weight'].t() + w[p + 'pointwise_in.bias'], dim=-1) * valid[..., None]
    kernel = w[p + 'depthwise.weight'].shape[-1]
    y = F.conv1d(y.transpose(1, 2), w[p + 'depthwise.weight'], w[p + 'depthwise.bias'], padding=kernel // 2,
                 groups=width).transpose(1, 2)
    y = F.silu(F.layer_norm(y, (width,), w[p + 'norm.weight'], w[p + 'norm.bias'], 1e-5))
    return y @ w[p + 'pointwise_out.weight'].t() + w[p + 'pointwise_out.bias']


def encode_audio(w, cfg, features, lengths):
    """[n, mels, T] -> ([n, T_enc, d] with zeros past each utterance's frames, encoder lengths,
    every layer's output through the final norm and zeroed alike, first to last)."""
    p = 'audio_encoder.'
    x = F.gelu(F.conv1d(features, w[p + 'conv1.weight'], w[p + 'conv1.bias'], padding=1))
    x = x * (torch.arange(x.shape[-1])[None, :] < lengths[:, None])[:, None, :]
    x = F.gelu(F.conv1d(x, w[p + 'conv2.weight'], w[p + 'conv2.bias'], stride=2, padding=1))
    x = x.transpose(1, 2)
    steps = x.shape[1]
    x = x + w[p + 'embed_positions'][:steps]
    enc_lengths = torch.tensor([(int(n) - 1) // 2 + 1 for n in lengths])
    valid = torch.arange(steps)[None, :] < enc_lengths[:, None]
    heads = cfg.encoder_num_attention_heads
    layer_outputs = []
    for i in range(cfg.encoder_num_layers):
        lp = f'{p}transformer.layers.{i}.'
        h = _norm(x, w, lp + 'input_layernorm.', 1e-5, rms=False)
        x = x + _attention(h, w, lp + 'self_attention.', heads, heads,
                           cfg.encoder_hidden_size // heads, causal=False, key_valid=valid)
        if cfg.encoder_conv_kernel_size:
            h = _norm(x, w, lp + 'pre_cross_attn_layernorm.', 1e-5, rms=False)
            x = x + _convolution_module(h, w, lp + 'cross_attention.', valid)
        h = _norm(x, w, lp + 'pre_mlp_layernorm.', 1e-5, rms=False)
        x = x + _mlp(h, w, lp + 'mlp.', gated=False)
        layer_outputs.append(x)

    normed = [_norm(y, w, p + 'transformer.final_layernorm.', 1e-5, rms=False) * valid[..., None]
              for y in layer_outputs]
    return normed[-1], enc_lengths, normed


def intermediate_layer(cfg, layers):
    """Layer ``cfg.ctc_intermediate_layer``'s normed output (of ``encode_audio``'s list), or None."""
    return layers[cfg.ctc_intermediate_layer - 1] if cfg.ctc_intermediate_layer else None


def projector_input(w, cfg, layers):
    """The last layer's output, or with the layer mix sum_l softmax(weights)_l x layer l's."""
    if not cfg.encoder_layer_mix:
        return layers[-1]
    weights = w['audio_projector.layer_weights'].softmax(0)
    return sum(weight * layer for weight, layer in zip(weights, layers))


def project_audio(w, cfg, frames, enc_lengths):
    """Stack frames (zero-padded tail), 2-layer GELU MLP; returns a list of [tokens_i, H]."""
    stack = cfg.audio_frame_stack
    out = []
    for utt, n in zip(frames, enc_lengths):
        utt = utt[: int(n)]
        pad = -utt.shape[0] % stack
        utt = torch.cat([utt, utt.new_zeros(pad, utt.shape[1])]).reshape(-1, stack * utt.shape[1])
        out.append(_mlp(utt, w, 'audio_projector.mlp.encoder.', gated=False))
    return out


def _embed(w, ids):
    return w['language_model.embedding.word_embeddings.weight'][ids]


def _logits(w, cfg, h):
    key = ('language_model.output_layer.weight' if cfg.untie_embeddings_and_output_weights
           else 'language_model.embedding.word_embeddings.weight')
    return h @ w[key].t()


def ctc_term(w, frames, enc_lengths, targets, target_lengths):
    """(summed CTC over utterances with an alignable target, their target ids, infeasible count)."""
    log_probs = (frames @ w['ctc_head.weight'].t() + w['ctc_head.bias']).log_softmax(-1)
    blank = log_probs.shape[-1] - 1
    total, count, infeasible = log_probs.new_zeros(()), 0, 0
    for u in range(frames.shape[0]):
        n = int(target_lengths[u])
        if n == 0:
            continue
        loss = F.ctc_loss(log_probs[u, : int(enc_lengths[u])], targets[u, :n], [int(enc_lengths[u])],
                          [n], blank=blank, reduction='sum')
        if torch.isinf(loss):
            infeasible += 1
            continue
        total, count = total + loss, count + n
    return total, torch.tensor(float(count)), infeasible


def mixed_ctc(cfg, last_sum, intermediate_sum):
    """The summed CTC objective: the last layer's, or its mix with the intermediate layer's."""
    if intermediate_sum is None:
        return last_sum
    weight = cfg.ctc_intermediate_weight
    return (1 - weight) * last_sum + weight * intermediate_sum


def encoder_ctc_objective(w, cfg, batch):
    """``--training-mode encoder_ctc``: sum CTC / N_ctc over the batch, the encoder and the CTC head
    alone (the CTC weight plays no part); also (summed CTC of the last layer, N_ctc, infeasible
    count, summed CTC of the intermediate layer or None)."""
    frames, enc_lengths, layers = encode_audio(w, cfg, batch['audio_features'], batch['audio_feature_lengths'])
    lower = intermediate_layer(cfg, layers)
    targets, target_lengths = batch['ctc_targets'], batch['ctc_target_lengths']
    ctc_sum, n_ctc, infeasible = ctc_term(w, frames, enc_lengths, targets, target_lengths)
    lower_sum = ctc_term(w, lower, enc_lengths, targets, target_lengths)[0] if lower is not None else None
    return mixed_ctc(cfg, ctc_sum, lower_sum) / n_ctc, (ctc_sum, n_ctc, infeasible, lower_sum)


PAD_ID = 256


def unpack(batch):
    """A packed batch (``cu_seqlens``: each row's segment starts, then s) as one segment per row,
    each at positions 0.. of its own row of s, followed by padding: segments share nothing there.
    The segment's last label is also written as the next token, as a padded row holds it. Audio
    and CTC rows keep their order, row-major order of the placeholder runs in both layouts."""
    tokens, labels, loss_mask = batch['tokens'], batch['labels'], batch['loss_mask']
    s = tokens.shape[1]
    rows = []
    for r in range(tokens.shape[0]):
        bounds = sorted(set(batch['cu_seqlens'][r].tolist()))
        rows.extend((r, a, b) for a, b in zip(bounds, bounds[1:]))
    out = {'tokens': torch.full((len(rows), s), PAD_ID), 'labels': torch.full((len(rows), s), PAD_ID),
           'loss_mask': torch.zeros(len(rows), s)}
    for i, (r, a, b) in enumerate(rows):
        out['tokens'][i, : b - a] = tokens[r, a:b]
        out['labels'][i, : b - a] = labels[r, a:b]
        out['loss_mask'][i, : b - a] = loss_mask[r, a:b]
        if b - a < s:
            out['tokens'][i, b - a] = labels[r, b - 1]
    return {**batch, **out, 'cu_seqlens': None}


def salm_objective(w, cfg, batch):
    """(objective, {'main': (ce_sum, n), 'mtp_k': (ce_sum, n)[, 'ctc': (ctc_sum, n)]}) for one
    batch of full samples (with CTC also 'ctc infeasible'); a packed batch is unpacked first."""
    if batch.get('cu_seqlens') is not None:
        batch = unpack(batch)
    tokens, labels, loss_mask = batch['tokens'], batch['labels'], batch['loss_mask'].float()
    b, s = tokens.shape
    x = _embed(w, tokens)
    stats = {}
    if batch.get('audio_features') is not None:
        frames, enc_lengths, layers = encode_audio(w, cfg, batch['audio_features'], batch['audio_feature_lengths'])
        lower = intermediate_layer(cfg, layers)
        if cfg.ctc_loss_weight:
            ctc_sum, n_ctc, infeasible = ctc_term(w, frames, enc_lengths, batch['ctc_targets'],
                                                  batch['ctc_target_lengths'])
            stats['ctc'] = (ctc_sum, n_ctc)
            stats['ctc infeasible'] = infeasible
            if lower is not None:
                stats['ctc intermediate'] = (ctc_term(w, lower, enc_lengths, batch['ctc_targets'],
                                                      batch['ctc_target_lengths'])[0], n_ctc)
        audio = iter(project_audio(w, cfg, projector_input(w, cfg, layers), enc_lengths))
        rows = []
        for r in range(b):  # fill each row's placeholder runs, utterance by utterance
            row, col = x[r], 0
            pieces = []
            while col < s:
                if tokens[r, col] == cfg.audio_token_id:
                    utt = next(audio)
                    pieces.append(utt)
                    col += utt.shape[0]
                else:
                    pieces.append(row[col: col + 1])
                    col += 1
            rows.append(torch.cat(pieces))
        x = torch.stack(rows)
    for i in range(cfg.num_layers):
        x = _llm_layer(x, w, f'language_model.decoder.layers.{i}.', cfg)
    hidden = _norm(x, w, 'language_model.decoder.final_layernorm.', cfg.norm_epsilon, rms=True)
    trunk_logits = _logits(w, cfg, hidden)
    ce = F.cross_entropy(trunk_logits.reshape(b * s, -1), labels.reshape(-1),
                         reduction='none').view(b, s)
    stats['main'] = ((ce * loss_mask).sum(), loss_mask.sum())
    # DeepSeek-V3 MTP by direct indexing: sequence position j holds seq[j]; target of depth k at
    # position i is seq[i+k+1], conditioned on the embedding of seq[i+k] (id 0 past the end).
    seq = torch.cat([tokens, labels[:, -1:]], dim=1)  # [b, s+1]
    answer = torch.cat([torch.zeros(b, 1), loss_mask], dim=1)  # answer[j]: seq[j] is supervised
    for k in range(1, (cfg.mtp_num_layers or 0) + 1):
        p = f'language_model.mtp.layers.{0 if cfg.mtp_use_repeated_layer else k - 1}.'
        idx = torch.arange(s)
        cond_ids = torch.where(idx + k < s, seq[:, (idx + k).clamp(max=s - 1)], torch.zeros_like(tokens))
        e = _norm(_embed(w, cond_ids), w, p + 'enorm.', cfg.norm_epsilon, rms=True)
        hn = _norm(hidden, w, p + 'hnorm.', cfg.norm_epsilon, rms=True)
        h = torch.cat([e, hn], dim=-1) @ w[p + 'eh_proj.weight'].t()
        h = _llm_layer(h, w, p + 'transformer_layer.', cfg, attention='*' in cfg.mtp_layer_pattern,
                       mlp='-' in cfg.mtp_layer_pattern, moe='E' in cfg.mtp_layer_pattern)
        hidden = _norm(h, w, p + 'final_layernorm.', cfg.norm_epsilon, rms=True)
        target_pos = (idx + k + 1).clamp(max=s)
        targets = seq[:, target_pos]
        mask = answer[:, target_pos] * (idx + k + 1 <= s).float()
        if cfg.mtp_mask_placeholder_paths:
            for j in range(1, k + 1):
                consumed = seq[:, (idx + j).clamp(max=s)]
                mask = mask * (consumed != cfg.audio_token_id).float()
        student = _logits(w, cfg, hidden)
        if cfg.mtp_self_distillation:  # KL from the (detached) main head at position i+k
            teacher = trunk_logits.detach()[:, (idx + k).clamp(max=s - 1)]
            ce = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                          reduction='none').sum(-1)
        else:
            ce = F.cross_entropy(student.reshape(b * s, -1), targets.reshape(-1),
                                 reduction='none').view(b, s)
        stats[f'mtp_{k}'] = ((ce * mask).sum(), mask.sum())
    return stats


def combine(stats_list, cfg):
    """The global-batch objective from per-batch (sum, count) statistics."""
    total = {key: (sum(s[key][0] for s in stats_list), sum(s[key][1] for s in stats_list))
             for key in stats_list[0] if key != 'ctc infeasible'}
    loss = total['main'][0] / total['main'][1].clamp(min=1)
    depths = cfg.mtp_num_layers or 0
    for k in range(1, depths + 1):
        ce_sum, n = total[f'mtp_{k}']
        if n > 0:
            loss = loss + cfg.mtp_loss_scaling_factor / depths * ce_sum / n
    if 'ctc infeasible' in stats_list[0]:
        total['ctc infeasible'] = sum(s['ctc infeasible'] for s in stats_list)
    if 'ctc' in total and total['ctc'][1] > 0:
        lower = total['ctc intermediate'][0] if 'ctc intermediate' in total else None
        loss = loss + cfg.ctc_loss_weight * mixed_ctc(cfg, total['ctc'][0], lower) / total['ctc'][1]
    return loss, total
