"""How the SALM is laid out over devices and how data parallelism runs: a launch's choice, not
the model's, so a checkpoint loads under another layout (:data:`SINGLE_DEVICE_LAYOUT`)."""

from dataclasses import dataclass

from ..config_checks import ConfigError, at_least


@dataclass
class ParallelConfig:
    """Model, data, expert and pipeline parallelism (Megatron-Core's ModelParallelConfig and DDP options)."""
    # --- Parallelism ---
    tensor_model_parallel_size: int = 1
    """TP size."""
    pipeline_model_parallel_size: int = 1
    """PP size: audio encoder and projector on the first stage, MTP on the last."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Model chunks per PP rank (interleaved 1F1B: a smaller pipeline bubble for more
    point-to-point traffic); None or 1: one chunk per rank."""
    num_layers_per_virtual_pipeline_stage: int | None = None
    """LLM decoder layers per model chunk: sets the virtual pipeline size as
    num_layers / PP / this (Megatron-LM's alternative to the flag above)."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations along the sequence over the TP group."""
    expert_model_parallel_size: int = 1
    """EP size: experts are split over this many data-parallel ranks."""
    context_parallel_size: int = 1
    """Context parallelism (not supported yet: must be 1)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state (fp32 main params) over DP."""
    overlap_grad_reduce: bool = False
    """Overlap the DP gradient reduction with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the forward pass."""
    batch_p2p_sync: bool = False
    """Synchronise the whole GPU after each batched pipeline send/receive (Megatron-Core's
    default, a guard for a PyTorch bug long fixed): it stalls the host several times per
    microbatch, so it is off here."""

    def _validate_parallel(self) -> None:
        """The layout on its own (what it asks of the model: SALMConfig)."""
        at_least(self, 1, ('tensor_model_parallel_size', 'pipeline_model_parallel_size',
                           'expert_model_parallel_size'))
        vp = self.virtual_pipeline_model_parallel_size
        if vp is not None and vp < 1:
            raise ConfigError(f'--virtual-pipeline-model-parallel-size must be >= 1, got {vp}')
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError('--sequence-parallel needs --tensor-model-parallel-size > 1')
        if self.context_parallel_size != 1:
            raise ConfigError('--context-parallel-size > 1 is not supported yet')
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError('--overlap-param-gather needs --use-distributed-optimizer')


SINGLE_DEVICE_LAYOUT = {'tensor_model_parallel_size': 1, 'pipeline_model_parallel_size': 1, 'sequence_parallel': False,
                        'virtual_pipeline_model_parallel_size': None, 'num_layers_per_virtual_pipeline_stage': None,
                        'cuda_graph_impl': 'none', 'cuda_graph_scope': None}
"""The layout fields that a tool loading a checkpoint resets, at their one-device values; training's
CUDA graphs are a launch's choice too, and the tools that load a checkpoint run eagerly."""
