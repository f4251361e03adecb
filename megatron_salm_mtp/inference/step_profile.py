"""Operators, FLOPs and host reads of one decoding step, by part, on any device.

A small model's decoding step is bound by its number of kernels, not by bytes or FLOPs: eager, by
their launches; replayed from a CUDA graph, by their latency back to back (microseconds each). Each
aten operator that computes (views excluded) is about one kernel, so counting operators, even on
a CPU, shows where a GPU step's time goes. ``profile_steps`` runs a decoding call with the parts
of its steps labelled and tallies per step: operators and matmul/attention FLOPs by part, and the
values the host reads from the device (each a wait for the GPU's queue), inside the step and
between steps. Steps must run eagerly (operators replayed from a graph are not seen).
"""

from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ..compat import mcore
from . import drafter
from .rows import RowState
from .trunk_cache import TrunkCache
from .workspace import DecodeWorkspace

VIEWS = {'view', '_unsafe_view', 't', 'alias', 'permute', 'unsqueeze', 'squeeze', 'slice', 'split',
         'split_with_sizes', 'select', 'transpose', 'detach', 'expand', 'as_strided', 'reshape',
         '_reshape_alias', 'lift_fresh', 'empty', 'scalar_tensor'}
"""aten operators that make no kernel: views, and allocations without a fill."""

HOST_READS = {'_local_scalar_dense', 'nonzero'}
"""aten operators that hand the host a device value (``item``, ``bool``, boolean-mask indexing);
``Tensor.tolist`` and copies to the CPU are counted as well."""

CPU_ATTENTION = {'_scaled_dot_product_flash_attention_for_cpu'}


class StepTally(TorchDispatchMode):
    """Per step: operators and FLOPs by part, host reads inside the step and between steps."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.in_step = False
        self.steps: list[dict[str, Counter]] = []
        self.reads_between: list[int] = [0]
        self.mtp_calls = 0

    def begin_step(self) -> None:
        self.in_step, self.mtp_calls = True, 0
        self.steps.append({'ops': Counter(), 'flops': Counter(), 'host_reads': Counter()})

    def end_step(self) -> None:
        self.in_step = False
        self.reads_between.append(0)

    def host_read(self) -> None:
        if self.in_step:
            self.steps[-1]['host_reads'][self.parts[-1] if self.parts else 'glue'] += 1
        else:
            self.reads_between[-1] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in HOST_READS or _copies_to_host(name, args, out):
            self.host_read()
        if self.in_step and name not in VIEWS:
            part = self.parts[-1] if self.parts else 'glue'
            self.steps[-1]['ops'][part] += 1
            self.steps[-1]['flops'][part] += _flops(func, name, args, kwargs, out)
        return out


def _copies_to_host(name: str, args, out) -> bool:
    if name == '_to_copy':
        return args[0].device.type != 'cpu' and out.device.type == 'cpu'
    if name == 'copy_':
        return args[0].device.type == 'cpu' and args[1].device.type != 'cpu'
    return False


def _flops(func, name: str, args, kwargs, out) -> int:
    if func.overloadpacket in flop_registry:
        return flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
    if name in CPU_ATTENTION:  # q [b, heads, sq, d] against k [b, groups, sk, d]: QK^T and PV
        (batch, heads, queries, dim), keys = args[0].shape, args[1].shape[2]
        return 4 * batch * heads * queries * keys * dim
    return 0


@contextmanager
def _patched(owner, attribute: str, wrapper_of: Callable):
    own = attribute in vars(owner)  # not inherited: put back as it was
    original = getattr(owner, attribute)
    setattr(owner, attribute, wrapper_of(original))
    try:
        yield
    finally:
        if own:
            setattr(owner, attribute, original)
        else:
            delattr(owner, attribute)


def _labelled(tally: StepTally, label):
    """Wrapper maker: run the wrapped callable under ``label`` (a string, or a function of the
    tally giving one)."""
    def wrapper_of(function):
        def labelled(*args, **kwargs):
            tally.parts.append(label if isinstance(label, str) else label(tally))
            try:
                return function(*args, **kwargs)
            finally:
                tally.parts.pop()
        return labelled
    return wrapper_of


def _mtp_depth(tally: StepTally) -> str:
    tally.mtp_calls += 1
    return f'mtp depth {tally.mtp_calls}'


def _step_boundary(tally: StepTally):
    def wrapper_of(run):
        def counted_run(self, name, step):
            tally.begin_step()
            try:
                return run(self, name, step)
            finally:
                tally.end_step()
        return counted_run
    return wrapper_of


def _counted_tolist(tally: StepTally, on_cpu: bool):
    """``Tensor.tolist`` counted as a host read when its tensor is on the device (on a CPU run,
    every call: the loops read no host-only tensor that way)."""
    def wrapper_of(tolist):
        def counted(self):
            if on_cpu or self.device.type != 'cpu':
                tally.host_read()
            return tolist(self)
        return counted
    return wrapper_of


def profile_steps(decode: Callable[[], object], device) -> dict[str, object]:
    """Tallies of the steps of ``decode()`` (eager, on ``device``): per part, operators and FLOPs
    of the last step (every step has the same shapes); host reads per step, inside and between
    steps. Parts: the trunk forward (embedding, layers, states kept), its head, each MTP depth's
    layer, the MTP heads, the rows' bookkeeping and the glue between them."""
    tally = StepTally()
    patches = [(DecodeWorkspace, 'feed', _labelled(tally, 'trunk')),
               (TrunkCache, 'next_tokens', _labelled(tally, 'trunk head')),
               (mcore, 'run_mtp_layer_on_ids', _labelled(tally, _mtp_depth)),
               (drafter, 'head_argmax', _labelled(tally, 'mtp heads')),
               (RowState, 'emit', _labelled(tally, 'bookkeeping')),
               (RowState, 'count_step', _labelled(tally, 'bookkeeping')),
               (DecodeWorkspace, 'run', _step_boundary(tally)),
               (torch.Tensor, 'tolist', _counted_tolist(tally, torch.device(device).type == 'cpu'))]
    with ExitStack() as stack:
        for owner, attribute, wrapper_of in patches:
            stack.enter_context(_patched(owner, attribute, wrapper_of))
        stack.enter_context(tally)
        decode()
    if not tally.steps:
        raise ValueError('the decoding call ran no step after its prefill')
    last = tally.steps[-1]
    steps = len(tally.steps)
    return {'steps': steps, 'ops': dict(last['ops']), 'flops': dict(last['flops']),
            'host_reads_in_step': sum(sum(s['host_reads'].values()) for s in tally.steps) / steps,
            # between steps: after each step, before the next (the loop's check); not the prefill's
            'host_reads_between_steps': sum(tally.reads_between[1:-1]) / max(steps - 1, 1)}
