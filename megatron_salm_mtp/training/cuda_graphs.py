"""Megatron-Core's CUDA graphs of the LLM's and MTP's transformer layers, around the training steps.

``--cuda-graph-impl local``: core gives each graphed layer a graph manager (the TransformerConfig
asks for it). The first step runs the layers eagerly and records their calls; core's schedules
build the graphs at that step's end and later calls replay them. Here: count and release them,
and keep each graph's input buffers its own on releases whose graphs share them
(``compat.mcore.keep_cuda_graph_input_buffers``).

``--cuda-graph-impl transformer_engine``: core's ``TECudaGraphHelper`` captures one graph per layer
with TE's ``make_graphed_callables`` once ``--cuda-graph-warmup-steps`` eager steps have run, as
Megatron-LM's training loop does; with ``--overlap-param-gather`` the parameter all-gather hooks are
held off during the capture and then run by hand before each replay (a graph skips module hooks).
The helper finds the layers through a chunk's ``decoder`` and ``mtp``, which the SALM keeps on its
``language_model``: it is handed a view of each DDP chunk whose ``module`` is that GPTModel.

Both need the graph-safe RNG tracker (``parallel.setup.set_seed``) before the model is built.
Evaluation runs the layers eagerly with either (``eager``).
"""

import contextlib
import logging

import torch
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import (
    init_num_microbatches_calculator,
    unset_num_microbatches_calculator,
)
from megatron.core.transformer.cuda_graphs import TECudaGraphHelper, delete_cuda_graphs
from megatron.core.utils import get_attr_wrapped_model

from ..compat import mcore
from ..config import SALMConfig

logger = logging.getLogger(__name__)


class _LanguageModelChunk:
    """A DDP chunk as core's graph helper reads it: layers through ``module`` (the SALM's GPTModel),
    gradient buffers and parameter hooks from DDP."""

    def __init__(self, ddp_chunk):
        self.module = get_attr_wrapped_model(ddp_chunk, 'language_model')
        self.zero_grad_buffer = ddp_chunk.zero_grad_buffer
        self._make_forward_pre_hook = ddp_chunk._make_forward_pre_hook


class LayerGraphs:
    """The training run's layer graphs: ``before_step`` captures them when due, ``count`` says
    how many are in use, ``close`` releases them (core keeps a process-wide record)."""

    def __init__(self, model_chunks, cfg: SALMConfig, micro_batch_size: int, global_batch_size: int,
                 optimizer):
        self.impl, self.model_chunks = cfg.cuda_graph_impl, model_chunks
        self.warmup_steps, self.overlap_param_gather = cfg.cuda_graph_warmup_steps, cfg.overlap_param_gather
        self.helper, self.reported = None, self.impl == 'none'
        if self.impl == 'local':
            mcore.keep_cuda_graph_input_buffers()  # else core 0.16's graphs give wrong gradients
        if self.impl == 'transformer_engine':
            # The helper sizes TE's warm-up by core's global microbatch count, unused elsewhere here.
            unset_num_microbatches_calculator()
            init_num_microbatches_calculator(torch.distributed.get_rank(), None, global_batch_size,
                                             micro_batch_size,
                                             parallel_state.get_data_parallel_world_size())
            self.helper = TECudaGraphHelper(
                model=[_LanguageModelChunk(chunk) for chunk in model_chunks],
                config=get_attr_wrapped_model(model_chunks[0], 'config'), seq_length=cfg.seq_length,
                micro_batch_size=micro_batch_size, optimizers=[optimizer])

    def before_step(self, steps_done: int) -> None:
        """Capture (transformer_engine) once ``steps_done`` eager steps of this run have run."""
        if self.helper is None or self.helper.graphs_created() or steps_done < self.warmup_steps:
            return
        if self.overlap_param_gather:
            for chunk in self.model_chunks:
                chunk.disable_forward_pre_hook(param_sync=False)
        self.helper.create_cudagraphs()
        if self.overlap_param_gather:
            for chunk in self.model_chunks:
                chunk.enable_forward_pre_hook()
            self.helper.cuda_graph_set_manual_hooks()

    @contextlib.contextmanager
    def eager(self):
        """Run the graphed layers eagerly inside the block (evaluation). Core's local graphs would
        replay the training step's forward graphs there, without gradients (separate validation
        graphs are not in core 0.16 or 0.19); TE's graphs replay in training mode only, so
        evaluation is eager with them already. A layer takes the graph path while it holds a
        ``cudagraph_manager``: each is set aside for the block and put back, graphs intact."""
        held = [(module, module.cudagraph_manager) for chunk in self.model_chunks for module in chunk.modules()
                if hasattr(module, 'cudagraph_manager')] if self.impl == 'local' else []
        for module, _ in held:
            del module.cudagraph_manager
        try:
            yield
        finally:
            for module, manager in held:
                module.cudagraph_manager = manager

    def after_step(self) -> None:
        """Log once, when they exist, how many graphs the steps replay from now on."""
        if not self.reported and self.count():
            self.reported = True
            logger.info('--cuda-graph-impl %s: %d layer graphs replay from now on', self.impl, self.count())

    def count(self) -> int:
        """Graphs in use: local's built forward graphs, or TE's per-layer graphs."""
        if self.impl == 'local':
            return sum(runner.fwd_graph is not None for chunk in self.model_chunks
                       for module in chunk.modules() if hasattr(module, 'cudagraph_manager')
                       for runner in module.cudagraph_manager.cudagraph_runners)
        if self.helper is None:
            return 0
        return sum(len(layer.cuda_graphs) for layers in self.helper.callables_per_chunk for layer in layers)

    def close(self) -> None:
        """Release the graphs and core's record of them: a model built later in this process
        (the bench's next configuration) records its own."""
        if self.impl == 'local':
            delete_cuda_graphs()
        elif self.helper is not None and self.helper.graphs_created():
            self.helper.delete_cuda_graphs()
