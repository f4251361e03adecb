"""The SALM as it is built: its architecture, layout, precision and kernels, one section each
(Megatron-Core's TransformerConfig extends its ModelParallelConfig the same way), and the checks
between the sections.

``validate()`` runs before any process group or tensor exists and names the offending flag, so a
configuration that cannot work fails in the first second, not after a model build.
"""

import dataclasses
from dataclasses import dataclass

from ..config_checks import ConfigError, check_types, flag
from .cuda_graph_checks import validate_cuda_graphs
from .model import ModelConfig
from .parallel import SINGLE_DEVICE_LAYOUT, ParallelConfig
from .precision import KernelConfig, PrecisionConfig

SECTIONS = (ModelConfig, ParallelConfig, PrecisionConfig, KernelConfig)
"""SALMConfig's sections; each declares its own fields, SALMConfig none."""


@dataclass
class SALMConfig(ModelConfig, ParallelConfig, PrecisionConfig, KernelConfig):
    """Every setting the model is built from; each field is declared by one of its sections."""

    @property
    def padded_vocab_size(self) -> int:
        if self.make_vocab_size_divisible_by is None:
            return self.vocab_size
        multiple = self.make_vocab_size_divisible_by * self.tensor_model_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    @property
    def virtual_pipeline_size(self) -> int | None:
        """Model chunks per PP rank when interleaving is on (from either flag), else None."""
        layers = self.num_layers_per_virtual_pipeline_stage
        if layers:
            chunks = self.num_layers // self.pipeline_model_parallel_size // layers
        else:
            chunks = self.virtual_pipeline_model_parallel_size
        return chunks if chunks and chunks > 1 else None

    def validate(self, world_size: int | None = None, num_microbatches: int | None = None,
                 vocabulary: bool = True) -> None:
        """Each section, then what the layout asks of the model. ``num_microbatches`` (per DP
        rank and global batch), when known, is checked against the interleaved schedule;
        ``vocabulary=False`` before the tokenizer has set it."""
        check_types(self)
        self._validate_model(vocabulary)
        self._validate_parallel()
        self._validate_precision()
        self._validate_kernels()
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if world_size is not None and world_size % (tp * pp):
            raise ConfigError(f'world size {world_size} is not divisible by '
                              f'--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp}')
        split = [('num_attention_heads', self.num_attention_heads),
                 ('num_query_groups', self.num_query_groups or self.num_attention_heads),
                 ('encoder_num_attention_heads', self.encoder_num_attention_heads)]
        for name, value in split + ([('vocab_size', self.padded_vocab_size)] if vocabulary else []):
            if value % tp:
                raise ConfigError(f'{flag(name)}: {name}={value} is not divisible by '
                                  f'--tensor-model-parallel-size {tp}')
        if self.num_layers % pp:
            raise ConfigError(f'--num-layers {self.num_layers} is not divisible by '
                              f'--pipeline-model-parallel-size {pp}')
        self._validate_virtual_pipeline(num_microbatches)
        self._validate_expert_layout(world_size)
        if self.mtp_recompute and not self.mtp_depths:
            raise ConfigError('--mtp-recompute needs --mtp-num-layers > 0')
        if self.sequence_parallel and self.seq_length % tp:
            raise ConfigError(f'--seq-length {self.seq_length} is not divisible by '
                              f'--tensor-model-parallel-size {tp} (needed by --sequence-parallel)')
        validate_cuda_graphs(self)

    def _validate_expert_layout(self, world_size: int | None) -> None:
        ep = self.expert_model_parallel_size
        if self.num_experts is None:
            if ep != 1:
                raise ConfigError(f'--expert-model-parallel-size {ep} needs --num-experts')
            return
        if self.num_experts % ep:
            raise ConfigError(f'--num-experts {self.num_experts} is not divisible by '
                              f'--expert-model-parallel-size {ep}')
        if self.moe_grouped_gemm and self.transformer_impl == 'local':
            raise ConfigError('--moe-grouped-gemm needs --transformer-impl transformer_engine')
        # Experts keep the tensor-parallel split (expert TP = TP), so EP takes data-parallel ranks.
        model_parallel = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if world_size is not None and (world_size // model_parallel) % ep:
            raise ConfigError(f'--expert-model-parallel-size {ep} does not divide the data-parallel '
                              f'size {world_size // model_parallel} (world size {world_size} / '
                              f'(--tensor-model-parallel-size x --pipeline-model-parallel-size))')

    def _validate_virtual_pipeline(self, num_microbatches: int | None) -> None:
        vp_flag = '--virtual-pipeline-model-parallel-size'
        layers_flag = '--num-layers-per-virtual-pipeline-stage'
        pp, vp = self.pipeline_model_parallel_size, self.virtual_pipeline_model_parallel_size
        layers, per_rank = self.num_layers_per_virtual_pipeline_stage, self.num_layers // pp
        if layers is not None:
            if layers < 1 or per_rank % layers:
                raise ConfigError(f'{layers_flag} {layers} does not divide the {per_rank} decoder layers '
                                  f'of a pipeline rank (--num-layers {self.num_layers} / '
                                  f'--pipeline-model-parallel-size {pp})')
            if vp is not None and vp != per_rank // layers:
                raise ConfigError(f'{vp_flag} {vp} contradicts {layers_flag} {layers} ({per_rank} layers '
                                  f'per pipeline rank make {per_rank // layers} chunks): give one of them')
        chunks = self.virtual_pipeline_size
        if chunks is None:
            return
        if pp == 1:
            raise ConfigError(f'{vp_flag} / {layers_flag} (interleaved pipeline) need '
                              '--pipeline-model-parallel-size > 1')
        if self.num_layers % (pp * chunks):
            raise ConfigError(f'--num-layers {self.num_layers} is not divisible by '
                              f'--pipeline-model-parallel-size {pp} x {vp_flag} {chunks}')
        # Core's interleaved schedule runs microbatches in groups of PP per model chunk
        # (microbatch_group_size_per_vp_stage) and refuses a last, smaller group.
        if num_microbatches is not None and num_microbatches % pp:
            raise ConfigError(f'{vp_flag} {chunks} (interleaved pipeline) needs a number of '
                              f'microbatches that is a multiple of --pipeline-model-parallel-size {pp}; '
                              f'--global-batch-size / (--micro-batch-size x data-parallel size) gives '
                              f'{num_microbatches}')
    def replace(self, **changes) -> 'SALMConfig':
        return dataclasses.replace(self, **changes)

    def with_single_device_layout(self, tensor_model_parallel_size: int = 1) -> 'SALMConfig':
        """This model laid out for the tools that load a checkpoint whatever layout trained it
        (export, decoding, generate): one device, or ``tensor_model_parallel_size`` devices of
        one pipeline stage; one chunk per rank, no sequence parallelism."""
        return self.replace(**dict(SINGLE_DEVICE_LAYOUT, tensor_model_parallel_size=tensor_model_parallel_size))
