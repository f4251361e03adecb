"""Everything that differs between the supported Megatron-Core releases (0.16.1 to 0.19.x).

The rest of the package calls these functions and never looks at the version itself. What differs,
and what the plugin does about it:

* ``MultiTokenPredictionLayer.forward`` returns ``(hidden, input_ids, position_ids)`` up to 0.17 and
  also the rolled ``padding_mask`` from 0.18 (MoE routing only). ``run_mtp_layer`` returns the
  first three on every version; the plugin passes no padding mask (dense MLP, explicit masks).
* The MTP layer's inner transformer layer is the submodule ``transformer_layer`` on 0.16 and
  ``mtp_model_layer`` on 0.17+ (whose sharded state dict maps it back to ``transformer_layer.``
  for checkpoints). ``mtp_block_spec`` builds layers that keep the 0.16 name on every version, so
  parameter names, ``state_dict`` keys, converters and distributed checkpoints are the same
  whichever release trains or loads.
* dist_checkpointing's long-lived writer process is a spawned multiprocessing Manager behind the
  module global ``filesystem_async._results_queue`` (0.16 to 0.19), which ``_get_write_results_queue``
  (0.16) or ``get_write_results_queue`` (0.17+) fills on the first save. ``start_checkpoint_writer``
  fills it beforehand with a Manager whose server process dies with this one (its own would
  outlive a SIGKILLed rank).
* 0.16's MoE router gating reads ``te_general_gemm``, defined only when Transformer Engine
  imports; ``enable_router_without_te`` defines it as None (0.17+'s value without TE).
* The MoE routers' logged losses sit in a dict on 0.16 and in a metrics tracker on 0.19
  (``moe_aux_loss_entries`` reads either).
* 0.19 runs an MTP layer on given next-token ids without the roll (``forward_single_position``);
  ``run_mtp_layer_on_ids`` does the same on 0.16 from the steps that method calls.
* ``dist_checkpointing.save`` takes ``async_strategy`` from 0.19 and defaults it to ``nvrx``
  (nvidia-resiliency-ext, whose requests need its own queue); ``async_save_options`` asks for
  Megatron-Core's own implementation there, the only one 0.16 has, so ``--async-save`` runs the
  same code on every release.
* ``get_mtp_layer_spec_for_backend`` renamed its first argument (``transformer_layer_spec`` ->
  ``mtp_model_layer_spec``); ``get_gpt_mtp_block_spec_for_backend`` kept its signature, and is
  the only one called (positionally).

* ``SpeechGPTModel`` (``model/llm.py``) overrides core's private ``GPTModel._postprocess``: it relies
  on ``GPTModel.forward`` ending in ``self._postprocess(...)`` and on the argument names in
  ``POSTPROCESS_ARGUMENTS`` (the ones it names, or reads from its ``**kwargs``), the same from 0.16
  to 0.19. ``check_postprocess_contract`` fails naming the release when either changes (a test
  runs it on each CI stack).
* For packed rows it also overrides ``GPTModel._preprocess`` (RoPE angles per token position): it
  relies on ``GPTModel.forward`` calling ``self._preprocess(...)`` and reading its outputs in the
  order ``PREPROCESS_OUTPUTS`` begins with (the same from 0.16 to 0.19); ``check_preprocess_contract``
  fails naming the release when that changes.

* The TransformerConfig field of the CUDA graphs' coverage is ``cuda_graph_scope`` up to 0.18 and
  ``cuda_graph_modules`` from 0.19 (where ``cuda_graph_scope`` is a deprecated alias that warns);
  ``cuda_graph_fields`` names whichever the release has. Both take a list of part names, empty for
  whole layers.
* Core's local CUDA graphs (``--cuda-graph-impl local``) up to 0.17 hand a graph's input buffer
  back to their reuse pool right after its forward capture, though the layer's backward graph still
  reads it: a later graph given that buffer overwrites it at replay and the earlier layer's weight
  and input gradients come out wrong (with MTP: each depth's layer takes the first decoder layer's
  input buffer). 0.18 keeps them (NVIDIA/Megatron-LM 481efd0); ``keep_cuda_graph_input_buffers``
  does the same on 0.16 and 0.17.

Megatron-Core fixes of 0.16.1 sharp edges that 0.17+ brings (per-token MTP normalisation #3159,
zero-token clamp #3396, sequence-parallel scatter of multimodal embeddings in MTP #6256, MTP
input mask for modality placeholders #6770) live in ``GPTModel._postprocess``/``process_mtp_loss``,
which the plugin's ``SpeechGPTModel._postprocess`` replaces on every version: see README,
"Supported versions", for why the plugin's own guards stay on both.
"""

import collections
import dataclasses
import inspect
import multiprocessing
import os
import re
from multiprocessing.managers import SyncManager

from megatron.core import dist_checkpointing
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.package_info import __version__ as _MCORE_VERSION_STRING
from megatron.core.transformer import cuda_graphs as core_graphs
from megatron.core.transformer.transformer_config import TransformerConfig
from packaging.version import Version

from .process import die_with_parent

MCORE_VERSION = Version(_MCORE_VERSION_STRING)
MCORE_0_17 = MCORE_VERSION >= Version('0.17.0')
"""0.17 renamed the MTP inner layer (and the checkpoint writer's start function)."""

MTP_INNER_LAYER = 'transformer_layer'
"""Name of the MTP layer's transformer-layer submodule in parameter and checkpoint keys."""
_UPSTREAM_INNER_LAYER = 'mtp_model_layer' if MCORE_0_17 else 'transformer_layer'


POSTPROCESS_ARGUMENTS = ('hidden_states', 'input_ids', 'position_ids', 'labels', 'rotary_pos_emb',
                         'rotary_pos_cos', 'rotary_pos_sin', 'mtp_in_postprocess', 'loss_mask',
                         'attention_mask', 'packed_seq_params', 'runtime_gather_output')
"""``GPTModel._postprocess``'s arguments that ``SpeechGPTModel._postprocess`` relies on."""


def check_postprocess_contract() -> None:
    """RuntimeError naming the installed release unless ``GPTModel.forward`` still calls
    ``self._postprocess`` with the arguments ``SpeechGPTModel`` overrides it for."""
    if 'self._postprocess(' not in inspect.getsource(GPTModel.forward):
        raise RuntimeError(f'megatron-core {MCORE_VERSION}: GPTModel.forward no longer calls '
                           'self._postprocess, which SpeechGPTModel overrides (model/llm.py)')
    params = inspect.signature(GPTModel._postprocess).parameters
    missing = [name for name in POSTPROCESS_ARGUMENTS if name not in params]
    if missing:
        raise RuntimeError(f'megatron-core {MCORE_VERSION}: GPTModel._postprocess has no {missing}, which '
                           'SpeechGPTModel._postprocess (model/llm.py) relies on')


PREPROCESS_OUTPUTS = ('decoder_input', 'rotary_pos_emb')
"""The leading outputs of ``GPTModel._preprocess``, in ``GPTModel.forward``'s order;
``SpeechGPTModel._preprocess`` replaces the second."""


def check_preprocess_contract() -> None:
    """RuntimeError naming the installed release unless ``GPTModel.forward`` still unpacks
    ``self._preprocess(...)``'s outputs starting with ``PREPROCESS_OUTPUTS``."""
    call = re.search(r'(\w+) = self\._preprocess\((?s:.*?)\n\s*\(([^)]*)\)\s*=\s*\1\b',
                     inspect.getsource(GPTModel.forward))
    if call is None:
        raise RuntimeError(f'megatron-core {MCORE_VERSION}: GPTModel.forward no longer unpacks '
                           'self._preprocess(...), which SpeechGPTModel overrides (model/llm.py)')
    names = tuple(name.strip() for name in call.group(2).split(',') if name.strip())
    if names[:len(PREPROCESS_OUTPUTS)] != PREPROCESS_OUTPUTS:
        raise RuntimeError(f'megatron-core {MCORE_VERSION}: GPTModel._preprocess outputs {names}, '
                           f'SpeechGPTModel._preprocess (model/llm.py) replaces the second of {PREPROCESS_OUTPUTS}')


def run_mtp_layer(layer, **kwargs):
    """One MTP depth: ``(hidden_states, input_ids, position_ids)`` on every version."""
    outputs = layer(**kwargs)
    return outputs[0], outputs[1], outputs[2]


def run_mtp_layer_on_ids(layer, hidden_states, token_ids, position_ids, embedding, rotary_pos_emb):
    """One MTP depth over given positions, reading the given token ids as they are (no roll):
    what drafting with a KV cache needs. 0.19's ``forward_single_position``; on releases without
    it, the same two steps (embed, then ``_proj_and_transformer_layer``, unchanged since 0.16)."""
    single_position = getattr(layer, 'forward_single_position', None)
    if single_position is not None:
        return single_position(hidden_states=hidden_states, next_token_ids=token_ids,
                               position_ids=position_ids, embedding=embedding,
                               rotary_pos_emb=rotary_pos_emb)
    decoder_input = embedding(input_ids=token_ids, position_ids=position_ids)
    return layer._proj_and_transformer_layer(hidden_states=hidden_states, decoder_input=decoder_input,
                                             rotary_pos_emb=rotary_pos_emb)


def _stable_name_layer_class():
    """A ``MultiTokenPredictionLayer`` whose inner layer is registered as ``transformer_layer``."""
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionLayer

    class StableNameMTPLayer(MultiTokenPredictionLayer):
        """0.17+'s MTP layer with 0.16's submodule name (upstream code reads the property)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._modules = collections.OrderedDict(
                (MTP_INNER_LAYER if name == _UPSTREAM_INNER_LAYER else name, module)
                for name, module in self._modules.items())

        @property
        def mtp_model_layer(self):
            return self._modules[MTP_INNER_LAYER]

    return StableNameMTPLayer


_layer_class = None


def _adapt_mtp_layer_spec(spec):
    global _layer_class
    if _layer_class is None:
        _layer_class = _stable_name_layer_class()
    return dataclasses.replace(spec, module=_layer_class)


def mtp_block_spec(config, layer_spec, backend, vp_stage=None):
    """Core's ``get_gpt_mtp_block_spec_for_backend`` (None where this stage builds no MTP layer),
    with layers that keep the same parameter names on every supported version."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec_for_backend

    block = get_gpt_mtp_block_spec_for_backend(config, layer_spec, backend, vp_stage=vp_stage)
    if block is None or not MCORE_0_17:
        return block
    return dataclasses.replace(block, layer_specs=[_adapt_mtp_layer_spec(s) for s in block.layer_specs])


def cuda_graph_fields(impl: str, scopes: list, warmup_steps: int) -> dict:
    """TransformerConfig keywords of the training CUDA graphs on this release."""
    names = {field.name for field in dataclasses.fields(TransformerConfig)}
    coverage = 'cuda_graph_modules' if 'cuda_graph_modules' in names else 'cuda_graph_scope'
    return {'cuda_graph_impl': impl, coverage: list(scopes), 'cuda_graph_warmup_steps': warmup_steps}


class _InputKeepingReusePool:
    """Core's buffer pool of the local CUDA graphs (0.16, 0.17), except that a graph's own input
    buffers (the ones core marks ``can_skip_replay_copy``) never go back into it; the gradient
    buffers that core hands back after a backward capture are reused as before."""

    def __init__(self, pool):
        self._pool = pool

    def insert(self, tensor) -> None:
        if not hasattr(tensor, 'can_skip_replay_copy'):
            self._pool.insert(tensor)

    def __getattr__(self, name):  # get, owns: core's own
        return getattr(self._pool, name)


def keep_cuda_graph_input_buffers() -> None:
    """Before core's local CUDA graphs are created: no graph's input buffer is given to another
    graph (see the module notes; nothing to do from 0.18). Idempotent."""
    if MCORE_VERSION >= Version('0.18.0'):
        return
    record = core_graphs._CudagraphGlobalRecord
    if not isinstance(record.tensor_reuse_pool, _InputKeepingReusePool):
        record.tensor_reuse_pool = _InputKeepingReusePool(record.tensor_reuse_pool)


def enable_router_without_te() -> None:
    """Let the MoE router's gating GEMM run without Transformer Engine.

    0.16's ``moe_utils.RouterGatingLinearFunction`` tests the module global ``te_general_gemm``,
    which only a successful TE import defines (NameError otherwise); 0.17+ set it to None without
    TE. Setting it to None where missing selects the same torch matmul fallback on every release.
    """
    from megatron.core.transformer.moe import moe_utils
    if not hasattr(moe_utils, 'te_general_gemm'):
        moe_utils.te_general_gemm = None


def moe_aux_loss_entries():
    """[(name, per-layer values, reduce_group, avg_group, average over DP)] that the MoE routers
    recorded (raw losses, summed over calls). 0.16 keeps a dict with ``reduce_group_has_dp``
    (DP average where a reduce group lacks DP); 0.19 a metrics tracker with ``needs_dp_avg``."""
    from megatron.core.transformer.moe import moe_utils
    tracker = getattr(moe_utils, 'get_moe_metrics_tracker', None)
    if tracker is not None:
        return [(name, e.values, e.reduce_group, e.avg_group, e.needs_dp_avg)
                for name, e in tracker().metrics.items()]
    return [(name, e['values'], e.get('reduce_group'), e.get('avg_group'),
             e.get('reduce_group') is not None and not e.get('reduce_group_has_dp', False))
            for name, e in moe_utils.get_moe_layer_wise_logging_tracker().items()]


def clear_moe_aux_losses() -> None:
    """Zero what the MoE routers recorded (same call on every supported release)."""
    from megatron.core.transformer.moe import moe_utils
    moe_utils.clear_aux_losses_tracker()


def start_checkpoint_writer() -> bool:
    """Start dist_checkpointing's writer process now (the same spawned Manager its first save would
    start, but one that dies with this process); False where this release has none."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    if not hasattr(filesystem_async, '_results_queue'):
        return False
    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context('spawn'))
        manager.start(die_with_parent, (os.getpid(),))
        filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager alive
    return True


def async_save_options() -> dict:
    """``dist_checkpointing.save`` keywords for an async save on Megatron-Core's own writer."""
    if 'async_strategy' in inspect.signature(dist_checkpointing.save).parameters:
        return {'async_sharded_save': True, 'async_strategy': 'mcore'}
    return {'async_sharded_save': True}
