"""--cuda-graph-impl / --cuda-graph-scope / --cuda-graph-warmup-steps on the CPU: the flags reach
Megatron-Core's TransformerConfig of the LLM (and its MTP layers) and not the audio encoder's, the
tools that load a checkpoint drop them, and every combination core's layer graphs cannot take fails
in the parse + validation with one line naming the flags. The graphs themselves run in
tests/gpu/test_cuda_graphs_gpu.py."""

import pytest
import torch
from megatron.core.transformer import cuda_graphs as core_graphs
from packaging.version import Version

from megatron_salm_mtp.compat import mcore
from megatron_salm_mtp.config import ConfigError, SALMConfig
from megatron_salm_mtp.model import specs
from megatron_salm_mtp.model.transformer_config import encoder_transformer_config, llm_transformer_config
from megatron_salm_mtp.parallel import setup
from megatron_salm_mtp.tools.bench_train import graph_variants
from megatron_salm_mtp.train import parse_and_validate
from megatron_salm_mtp.training.cuda_graphs import LayerGraphs


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / 'train.jsonl'
    path.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    return str(path)


@pytest.fixture
def with_gpu(monkeypatch):
    """Validation as on a GPU machine (nothing here touches a device)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)


def _error(argv) -> str:
    with pytest.raises(ConfigError) as err:
        parse_and_validate(argv)
    assert '\n' not in str(err.value)
    return str(err.value)


def test_flags_reach_the_llm_and_mtp_config_not_the_encoders(manifest, with_gpu):
    run = parse_and_validate(['--train-manifest', manifest, '--no-pack-sequences', '--cuda-graph-impl', 'local',
                              '--mtp-num-layers', '2',
                              '--cuda-graph-scope', 'attn,mlp', '--cuda-graph-warmup-steps', '2'])
    model = run.model
    assert (model.cuda_graph_impl, model.cuda_graph_scope, model.cuda_graph_warmup_steps) == ('local', 'attn,mlp', 2)
    llm = llm_transformer_config(model)  # also the MTP layers' config
    scope = recorded_scope(llm)
    assert llm.cuda_graph_impl == 'local' and llm.cuda_graph_warmup_steps == 2
    assert [getattr(part, 'name', part) for part in scope] == ['attn', 'mlp']
    assert encoder_transformer_config(model).cuda_graph_impl == 'none'
    whole = llm_transformer_config(model.replace(cuda_graph_scope=None))
    assert recorded_scope(whole) == []


def recorded_scope(config) -> list:
    """The graph scope a TransformerConfig holds (0.19 renamed the field cuda_graph_modules and
    leaves the old one None)."""
    if hasattr(config, 'cuda_graph_modules'):
        return list(config.cuda_graph_modules or [])
    return list(config.cuda_graph_scope or [])


def test_eager_by_default_and_in_the_tools_that_load_a_checkpoint():
    assert llm_transformer_config(SALMConfig()).cuda_graph_impl == 'none'
    graphed = SALMConfig(cuda_graph_impl='transformer_engine', cuda_graph_scope='attn')
    loaded = graphed.with_single_device_layout()
    assert (loaded.cuda_graph_impl, loaded.cuda_graph_scope) == ('none', None)


def test_no_graphs_without_a_gpu(manifest):
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    assert _error(['--train-manifest', manifest, '--cuda-graph-impl', 'local']) == \
        '--cuda-graph-impl local needs a CUDA device (this run has none)'


REFUSED = [
    (['--cuda-graph-impl', 'full'], "--cuda-graph-impl 'full': choose none, local, transformer_engine"),
    (['--cuda-graph-scope', 'attn'], '--cuda-graph-scope needs --cuda-graph-impl local or transformer_engine'),
    (['--cuda-graph-impl', 'local', '--cuda-graph-scope', 'attn,full_iteration'],
     "--cuda-graph-scope 'full_iteration': choose among attn, mlp, moe_router, moe_preprocess"),
    (['--cuda-graph-impl', 'local', '--cuda-graph-warmup-steps', '-1'], '--cuda-graph-warmup-steps must be >= 0'),
    (['--cuda-graph-impl', 'local', '--no-pad-to-seq-length'],
     '--cuda-graph-impl local needs fixed shapes: drop --no-pad-to-seq-length'),
    (['--cuda-graph-impl', 'local', '--mtp-num-layers', '1', '--training-mode', 'head_only'],
     "--cuda-graph-impl local graphs the LLM's layers in training, which --training-mode head_only"),
    (['--cuda-graph-impl', 'local', '--mtp-num-layers', '1', '--mtp-recompute'],
     '--cuda-graph-impl local cannot graph layers that --mtp-recompute runs again in backward'),
    (['--cuda-graph-impl', 'transformer_engine', '--transformer-impl', 'local', '--bf16'],
     '--cuda-graph-impl transformer_engine needs Transformer Engine, --bf16'),
    (['--cuda-graph-impl', 'local', '--cuda-graph-scope', 'moe_router'],
     '--cuda-graph-scope moe_router needs MoE layers (--num-experts)'),
    (['--cuda-graph-impl', 'local', '--mtp-num-layers', '1', '--mtp-layer-pattern', '*E', '--num-experts', '2',
      '--cuda-graph-scope', 'moe_preprocess'], '--cuda-graph-scope moe_preprocess needs moe_router beside it'),
    (['--cuda-graph-impl', 'local', '--mtp-num-layers', '1', '--mtp-layer-pattern', '*E', '--num-experts', '2'],
     '--cuda-graph-impl local with --num-experts: core graphs a whole MoE layer only with drop-and-pad experts'),
    (['--cuda-graph-impl', 'local', '--mtp-num-layers', '1', '--mtp-layer-pattern', '*E', '--num-experts', '2',
      '--cuda-graph-scope', 'mlp'], '--cuda-graph-scope mlp: with --num-experts core counts every layer as MoE'),
]


@pytest.mark.parametrize('flags, message', REFUSED)
def test_combinations_core_cannot_graph_are_refused(manifest, with_gpu, flags, message):
    assert message in _error(['--train-manifest', manifest, '--no-pack-sequences'] + flags)


def test_packed_rows_are_refused(manifest, with_gpu):
    assert _error(['--train-manifest', manifest, '--cuda-graph-impl', 'local']) == (
        '--cuda-graph-impl local replays fixed attention layouts; packed rows change their utterance '
        'boundaries every step: add --no-pack-sequences')


def test_expandable_segments_need_nccl_graph_register_off(manifest, with_gpu, monkeypatch):
    monkeypatch.setenv('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')
    monkeypatch.delenv('NCCL_GRAPH_REGISTER', raising=False)
    argv = ['--train-manifest', manifest, '--no-pack-sequences', '--cuda-graph-impl', 'local']
    assert 'needs NCCL_GRAPH_REGISTER=0 in the environment' in _error(argv)
    monkeypatch.setenv('NCCL_GRAPH_REGISTER', '0')
    parse_and_validate(argv)


def test_transformer_engine_graphs_refuse_what_core_helper_cannot_index(with_gpu, monkeypatch):
    """The helper holds one graph per layer and microbatch, picked through GPTModel."""
    monkeypatch.setattr('importlib.util.find_spec', lambda name: object())  # as if TE were installed
    base = SALMConfig(cuda_graph_impl='transformer_engine', bf16=True)
    with pytest.raises(ConfigError, match='needs --pipeline-model-parallel-size 1'):
        base.replace(pipeline_model_parallel_size=2, num_layers=2).validate(vocabulary=False)
    with pytest.raises(ConfigError, match='--mtp-use-repeated-layer runs one layer per depth'):
        base.replace(mtp_num_layers=2, mtp_use_repeated_layer=True).validate(vocabulary=False)
    base.replace(mtp_num_layers=2).validate(vocabulary=False)


def test_bench_compares_eager_with_graphed_steps():
    graphed = SALMConfig(cuda_graph_impl='transformer_engine', cuda_graph_warmup_steps=2, cuda_graph_scope='attn')
    eager, same = graph_variants(graphed, compare=True, warmup_iters=3)
    assert (eager.cuda_graph_impl, eager.cuda_graph_scope, same) == ('none', None, graphed)
    with pytest.raises(ConfigError, match='give --warmup-iters >= 3'):
        graph_variants(graphed, compare=True, warmup_iters=2)
    with pytest.raises(ConfigError, match='--compare-cuda-graphs compares eager steps with graphed ones'):
        graph_variants(SALMConfig(), compare=True, warmup_iters=3)


@pytest.mark.parametrize('graphs,te_kernels,expected', [
    ('local', False, dict(graph_safe_rng=True, te_rng_tracker=False)),
    ('local', True, dict(graph_safe_rng=True, te_rng_tracker=True)),
    ('transformer_engine', True, dict(graph_safe_rng=True, te_rng_tracker=True)),
    ('none', True, dict(graph_safe_rng=False, te_rng_tracker=False))])
def test_graphs_seed_the_tracker_their_kernels_accept(with_gpu, monkeypatch, graphs, te_kernels, expected):
    """TE's attention refuses any tracker but TE's inside a capture (seen on the H200: 'Unsupported
    RNG states tracker'): with CUDA graphs and TE's kernels the seed goes through TE's tracker."""
    monkeypatch.setattr(specs, 'te_available', lambda: te_kernels)
    seeded = []
    monkeypatch.setattr(setup, 'set_seed', lambda seed, **kwargs: seeded.append((seed, kwargs)))
    setup.seed_for_model(SALMConfig(cuda_graph_impl=graphs), 7)
    assert seeded == [(7, expected)]


class _Layer(torch.nn.Module):
    """A layer as core's local graphs leave it: a ``cudagraph_manager`` submodule routes its calls."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.cudagraph_manager = torch.nn.Module()


def test_evaluation_runs_the_graphed_layers_eagerly_and_keeps_their_graphs():
    """Inside ``eager`` no layer holds its graph manager (core then runs it eagerly: evaluation
    never replays the training step's graphs); after it, each holds its own again, also when
    the evaluation fails."""
    chunk = torch.nn.Sequential(_Layer(), torch.nn.Linear(2, 2), _Layer())
    managers = [chunk[0].cudagraph_manager, chunk[2].cudagraph_manager]
    graphs = LayerGraphs([chunk], SALMConfig(cuda_graph_impl='local'), 1, 1, optimizer=None)
    with graphs.eager():
        assert not any(hasattr(m, 'cudagraph_manager') for m in chunk.modules())
        assert len(list(chunk.modules())) == 6  # the managers are no submodules meanwhile
    assert [chunk[0].cudagraph_manager, chunk[2].cudagraph_manager] == managers
    assert len(list(chunk.modules())) == 8
    with pytest.raises(RuntimeError), graphs.eager():
        raise RuntimeError('evaluation failed')
    assert [chunk[0].cudagraph_manager, chunk[2].cudagraph_manager] == managers


@pytest.mark.skipif(mcore.MCORE_VERSION >= Version('0.18.0'), reason="core keeps its graphs' input buffers")
def test_local_graphs_never_share_an_input_buffer(monkeypatch):
    """Core 0.16 hands a graph's input buffer back to its pool after the forward capture and gives
    it to the next graph that asks for one of that shape (an MTP depth's layer: the first decoder
    layer's), though the first graph's backward still reads it: wrong gradients. Once the local
    graphs are set up, an input buffer stays with its graph; gradient buffers are reused as before."""
    record, pool_class = core_graphs._CudagraphGlobalRecord, core_graphs.TensorReusePool
    monkeypatch.setattr(record, 'tensor_reuse_pool', pool_class())  # the process's own comes back after
    for shared in ('pool', 'tensor_strong_refs'):
        monkeypatch.setattr(pool_class, shared, [])
    monkeypatch.setattr(pool_class, 'tensor_strong_refs_dataptrs', set())
    LayerGraphs([], SALMConfig(cuda_graph_impl='local'), 1, 1, optimizer=None)
    pool, shape = record.tensor_reuse_pool, core_graphs.ArgMetadata(torch.zeros(4, 2, 8))
    input_buffer = pool.get(shape).detach()
    input_buffer.can_skip_replay_copy = False  # as core marks the buffer a replay copies into
    pool.insert(input_buffer)
    assert pool.get(shape).data_ptr() != input_buffer.data_ptr()
    grad_buffer = pool.get(shape)
    pool.insert(grad_buffer)
    assert pool.get(shape) is grad_buffer
