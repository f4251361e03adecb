"""Run ``python -m megatron_salm_mtp.megatron_lm.pretrain`` on CPU: ``python tests/support/megatron_lm_cpu.py FLAGS``.

Megatron-LM's ``pretrain()`` asserts CUDA and uses a few CUDA-only calls beyond the ones the
plugin's CPU adaptation (``compat/cpu.py``) covers for Megatron-Core. For tests only, this
script stands in for them, then runs the adapter's real entry point with a gloo process group
(pass ``--distributed-backend gloo``):

* ``initialize_megatron(allow_no_cuda=True)``: pretrain() calls it without;
* ``torch.cuda.device_count() == 1``: ``_initialize_distributed`` builds the model-parallel
  groups only when it sees a device;
* ``torch.cuda.Stream``/``stream``: ``get_model`` wraps DDP on a side stream;
* memory statistics (0): the training log reports them.
"""

import contextlib
import sys

import torch


class _CpuStream:
    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def _stand_in_for_cuda() -> None:
    from megatron.training import initialize, training

    from megatron_salm_mtp.compat.cpu import enable_if_no_cuda
    if not enable_if_no_cuda():
        raise RuntimeError('CUDA is present: run the real entry point instead')
    torch.cuda.device_count = lambda: 1
    torch.cuda.Stream = lambda *args, **kwargs: _CpuStream()
    torch.cuda.stream = lambda stream: contextlib.nullcontext()
    for name in ('memory_allocated', 'max_memory_allocated', 'memory_reserved', 'max_memory_reserved'):
        setattr(torch.cuda, name, lambda *args, **kwargs: 0)
    torch.cuda.memory_stats = lambda *args, **kwargs: {}
    initialize_without_cuda = initialize.initialize_megatron

    def initialize_megatron(*args, **kwargs):
        return initialize_without_cuda(*args, allow_no_cuda=True, **kwargs)

    training.initialize_megatron = initialize_megatron


if __name__ == '__main__':  # dist_checkpointing's helper process re-imports this file
    from megatron_salm_mtp.megatron_lm import pretrain
    _stand_in_for_cuda()
    sys.argv = ['pretrain.py'] + sys.argv[1:]
    pretrain.main()
