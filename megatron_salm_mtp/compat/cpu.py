"""Run Megatron-Core's real code paths on a CPU-only machine (gloo), for tests and laptops.

Megatron-Core places tensors on CUDA in about sixty spots (``device='cuda'``,
``torch.cuda.current_device()``, ``.cuda()``, ``grad.type() == 'torch.cuda.FloatTensor'``).
Rather than forking those call sites, one ``TorchFunctionMode`` rewrites CUDA device arguments
to CPU and a few ``torch.cuda`` functions are replaced. ``enable_if_no_cuda()`` is a no-op when
CUDA is present, so GPU runs take exactly the upstream paths.
"""

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    'torch.FloatTensor': 'torch.cuda.FloatTensor',  # clip_grads asserts this name
    'torch.HalfTensor': 'torch.cuda.HalfTensor',
    'torch.BFloat16Tensor': 'torch.cuda.BFloat16Tensor',
}
_active_mode = None


def _is_cuda(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):  # torch.cuda.current_device() returns an int ordinal
        return True
    if isinstance(device, str):
        return device.startswith('cuda')
    return isinstance(device, torch.device) and device.type == 'cuda'


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements in factory calls, ``.to()`` and ``.cuda()`` to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:  # tensors and modules already live on CPU
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if _is_cuda(kwargs.get('device')):
            kwargs['device'] = 'cpu'
        if kwargs.get('pin_memory'):  # pinning needs a CUDA driver
            kwargs['pin_memory'] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], 'cpu') + tuple(args[2:])
        return func(*args, **kwargs)


def _no_op():
    """A fresh do-nothing function per patched name: torch.compile's rule table maps each torch
    function object to one rule and refuses one object reached under names with different rules."""
    def no_op(*args, **kwargs):
        return None
    return no_op


def _all_to_all_with_host_splits(all_to_all_single):
    """The MoE all-to-all dispatcher turns its split sizes into host arrays only when they sit on
    the GPU (``moe_utils.maybe_move_tensor_to_cpu``); on CPU they stay tensors, which the process
    group refuses. Replaced at module level: torch function modes are off in backward passes,
    where ``tensor_parallel.mappings._AllToAll`` calls it again."""
    def call(output, input, output_split_sizes=None, input_split_sizes=None, *args, **kwargs):
        if torch.is_tensor(output_split_sizes):
            output_split_sizes = output_split_sizes.tolist()
        if torch.is_tensor(input_split_sizes):
            input_split_sizes = input_split_sizes.tolist()
        return all_to_all_single(output, input, output_split_sizes, input_split_sizes, *args, **kwargs)
    return call


class _CpuSideStream(torch.cpu.Stream):
    """Stand-in for ``torch.cuda.Stream``: the MoE all-to-all token dispatcher
    (``moe/token_dispatcher.py``) copies its split sizes to the host on a side stream and waits on
    the event it records. CPU work is ordered already, so the event is complete when recorded."""

    def record_event(self, event=None):
        return event or torch.cpu.Event()


def _install_device_rng() -> None:
    """Back Megatron-Core's CUDA RNG tracker by a CPU generator of its own.

    The tracker (``tensor_parallel.random``) seeds, saves and forks a per-TP-rank device stream;
    on CPU nothing draws from it (dropout uses the host generator), so a separate generator keeps
    its bookkeeping and checkpointed states real without disturbing the host RNG that
    ``use_cpu_initialization`` draws identical replicated weights from.
    """
    from megatron.core.tensor_parallel import random as mcore_random

    device_rng = torch.Generator()
    torch.cuda.get_rng_state = torch.cuda.random.get_rng_state = lambda device='cuda': device_rng.get_state()
    torch.cuda.set_rng_state = lambda state, device='cuda': device_rng.set_state(state)
    torch.cuda.manual_seed = lambda seed: device_rng.manual_seed(seed)
    torch.cuda.manual_seed_all = lambda seed: device_rng.manual_seed(seed)
    mcore_random._set_cuda_rng_state = lambda state, device=-1, graph_safe=False: device_rng.set_state(state)


def enable_if_no_cuda() -> bool:
    """Enter the CPU adaptation once per process when CUDA is absent; returns whether active."""
    global _active_mode
    if torch.cuda.is_available():
        return False
    if _active_mode is None:
        # A CPU device, not an ordinal: backward functions (e.g. sequence-parallel reduce-scatter
        # in tensor_parallel/layers.py) allocate with it where torch function modes are inactive.
        torch.cuda.current_device = lambda: torch.device('cpu')
        torch.cuda.device_count = lambda: 0
        torch.cuda.synchronize = _no_op()  # timers and checkpoint barriers
        torch.cuda.empty_cache = _no_op()
        torch.cuda.set_device = _no_op()
        # CPU work is ordered already; megatron-core 0.19's DDP bucket sync
        # (param_and_grad_buffer.start_grad_sync) asks for the current stream to wait on events.
        torch.cuda.current_stream = lambda device=None: torch.cpu.current_stream()
        torch.cuda.Stream = _CpuSideStream
        torch.distributed.all_to_all_single = _all_to_all_with_host_splits(
            torch.distributed.all_to_all_single)
        # Megatron's jit_fuser is torch.compile (e.g. the MoE router's expert-bias update): run
        # such functions eagerly, as written, rather than compile C++ kernels for the CPU.
        torch.compiler.set_stance('force_eager')
        _install_device_rng()
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
        _active_mode = _CudaToCpuMode()
        _active_mode.__enter__()
    return True
