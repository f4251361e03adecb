"""A SALM's step with its layers replaying core's local CUDA graphs against the same step with
them run eagerly, from the same weights (tests/gpu/test_cuda_graphs_gpu.py).

One training step records the graphs (core builds them at its end), then one batch goes through
forward and backward twice without an optimizer step: graphs replayed, then eagerly
(``LayerGraphs.eager``), the gradient buffers zeroed before each. Each pass reports its losses,
the graphed layers' outputs (what the final norms after them receive) and every parameter's
gradient; ``compare`` says what differs.
"""

import math
import os
from collections import defaultdict
from typing import NamedTuple

import torch
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.utils import get_attr_wrapped_model

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.data.synthetic_batches import synthetic_batch
from megatron_salm_mtp.parallel.setup import build_model, seed_for_model, set_seed
from megatron_salm_mtp.training.cuda_graphs import LayerGraphs
from megatron_salm_mtp.training.step import forward_backward, mtp_metrics
from tests.support.process import CONFIGS

CAPTURE_SEEDS, NEW_SEEDS = (0, 1), (10, 11)  # two microbatches a step; new ones: other tokens and audio
LOSS_RTOL, OUTPUT_RTOL, GRAD_RTOL = 1e-2, 2e-2, 5e-2  # bf16 (the same kernels on both sides)


class Pass(NamedTuple):
    losses: dict  # lm loss, then mtp_k loss
    outputs: dict  # graphed layers' outputs by the norm that reads them, one per microbatch
    grads: dict  # parameter name -> main_grad


def graph_config(flags: list, depths: int, spec: str):
    """(model config, training config) of the tiny SALM with local layer graphs."""
    run = parse_args(['--config', os.path.join(CONFIGS, 'tiny_cpu.yaml'), *flags, '--no-pack-sequences',
                      '--cuda-graph-impl', 'local', '--transformer-impl', spec])
    cfg = run.model.replace(mtp_num_layers=depths or None)
    cfg.validate(1)
    return cfg, run.train


def microbatches(cfg, micro_batch_size: int, seeds) -> list:
    return [synthetic_batch(micro_batch_size, cfg.seq_length, cfg.vocab_size, cfg.audio_token_id,
                            cfg.num_mel_bins, cfg.audio_frame_stack, seed=seed) for seed in seeds]


def _record_outputs(chunk, outputs: dict) -> None:
    """Keep what the final norms after the decoder and after each MTP depth's layer receive."""
    language_model = get_attr_wrapped_model(chunk, 'language_model')
    norms = {'decoder': language_model.decoder.final_layernorm}
    if language_model.mtp_process:
        norms.update({f'mtp_{k + 1}': layer.final_layernorm for k, layer in enumerate(language_model.mtp.layers)})
    for name, norm in norms.items():
        norm.register_forward_hook(lambda _, inputs, __, name=name: outputs[name].append(inputs[0].detach().float()))


def _one_pass(model, batches, cfg, outputs: dict) -> Pass:
    for chunk in model:
        chunk.zero_grad_buffer()
    outputs.clear()
    losses = {'lm loss': forward_backward(model, batches, cfg).mean}
    losses.update({k: v for k, v in mtp_metrics(model).items() if k.endswith('loss')})
    grads = {name: param.main_grad.detach().clone() for name, param in model[0].named_parameters()
             if param.requires_grad}
    return Pass(losses, {name: torch.cat(kept) for name, kept in outputs.items()}, grads)


def shared_input_buffers(model) -> list:
    """Graphed layers whose graphs copy their inputs into one same buffer (core 0.16's pool may
    hand one graph's input buffer to the next); core's internals, read only for the report."""
    owners = defaultdict(list)
    for name, module in model[0].named_modules():
        for runner in getattr(getattr(module, 'cudagraph_manager', None), 'cudagraph_runners', []):
            surface = getattr(runner, 'fwd_graph_input_surface', ())[:getattr(runner, 'num_dgrads', 0)]
            for buffer in surface:
                if buffer.requires_grad and not getattr(buffer, 'can_skip_replay_copy', True):
                    owners[buffer.data_ptr()].append(name)
    return [names for names in owners.values() if len(names) > 1]


def graphed_and_eager(cfg, micro_batch_size: int, seed_list) -> tuple:
    """(graphed pass, eager pass, graphs in use, graphs sharing an input buffer) on the batch of
    ``seed_list`` after a recording step on the capture batch."""
    seed_for_model(cfg, 1234)
    model = build_model(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True))
    graphs = LayerGraphs(model, cfg, micro_batch_size, 2 * micro_batch_size, optimizer=None)
    outputs = defaultdict(list)
    _record_outputs(model[0], outputs)
    try:
        _one_pass(model, microbatches(cfg, micro_batch_size, CAPTURE_SEEDS), cfg, outputs)  # records
        batch = microbatches(cfg, micro_batch_size, seed_list)
        graphed = _one_pass(model, batch, cfg, outputs)
        in_use, shared = graphs.count(), shared_input_buffers(model)
        with graphs.eager():
            eager = _one_pass(model, batch, cfg, outputs)
        return graphed, eager, in_use, shared
    finally:
        graphs.close()
        torch.cuda.set_stream(torch.cuda.default_stream())  # core's manager leaves a side stream if it failed
        set_seed(1234)  # the default tracker again for the tests that follow


def _relative(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    return float((a.float() - b.float()).norm()) / max(float(b.float().norm()), floor, 1e-30)


def compare(graphed: Pass, eager: Pass) -> str:
    """'' if the graphed pass agrees with the eager one in bf16; else what differs: the forward
    (losses, layer outputs), or only the gradients, naming the parameters that differ most."""
    lines = []
    losses = [f'{k} {graphed.losses[k]:.5f} vs eager {v:.5f}' for k, v in eager.losses.items()
              if not math.isclose(graphed.losses[k], v, rel_tol=LOSS_RTOL)]
    outputs = {name: _relative(graphed.outputs[name], kept) for name, kept in eager.outputs.items()}
    bad_outputs = [f'{name} layer output (rel {err:.3g})' for name, err in outputs.items() if err > OUTPUT_RTOL]
    if losses or bad_outputs:
        lines.append('FORWARD differs: ' + '; '.join(losses + bad_outputs))
    else:
        lines.append('forward agrees (' + ', '.join(f'{k} {v:.5f}' for k, v in eager.losses.items()) +
                     ', layer outputs rel ' + ', '.join(f'{n} {e:.2g}' for n, e in outputs.items()) + ')')
    floor = 1e-3 * max(float(g.float().norm()) for g in eager.grads.values())
    errors = sorted(((_relative(graphed.grads[name], grad, floor), name) for name, grad in eager.grads.items()),
                    reverse=True)
    bad = [(err, name) for err, name in errors if err > GRAD_RTOL]
    if not bad and not lines[0].startswith('FORWARD'):
        return ''
    if bad:
        lines.append(f'gradients differ in {len(bad)} of {len(errors)} parameters; most: ' +
                     ', '.join(f'{name} (rel {err:.3g})' for err, name in bad[:8]))
    else:
        lines.append(f'gradients agree (largest rel {errors[0][0]:.2g}: {errors[0][1]})')
    return '\n'.join(lines)
