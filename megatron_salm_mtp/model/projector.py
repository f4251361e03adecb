"""Audio projector: stack neighbouring encoder frames, then Megatron-Core's ``MultimodalProjector``.

Stacking ``s`` frames of width d into one vector of width s*d lowers the token rate (50 Hz ->
12.5 Hz for s=4) before the 2-layer GELU MLP maps it to the LLM width.
"""

import torch
import torch.nn.functional as F
from megatron.core.models.vision.multimodal_projector import MultimodalProjector
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from .specs import backend_for


def stack_frames(frames: torch.Tensor, stack: int) -> torch.Tensor:
    """[n, T, d] -> [n, ceil(T/stack), stack*d], zero-padding the last group."""
    n, steps, width = frames.shape
    pad = -steps % stack
    if pad:
        frames = F.pad(frames, (0, 0, 0, pad))
    return frames.reshape(n, (steps + pad) // stack, stack * width)


class AudioProjector(MegatronModule):
    def __init__(self, config: TransformerConfig, impl: str, encoder_width: int, stack: int):
        super().__init__(config=config)
        backend = backend_for(impl)
        self.stack = stack
        self.mlp = MultimodalProjector(
            config, MLPSubmodules(linear_fc1=backend.column_parallel_linear(),
                                  linear_fc2=backend.row_parallel_linear()),
            projector_type='mlp', input_size=stack * encoder_width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[n, T_enc, d_enc] -> [n, ceil(T_enc/stack), hidden]."""
        stacked = stack_frames(frames, self.stack)
        n, steps, width = stacked.shape
        projected = self.mlp(stacked.transpose(0, 1).contiguous())  # Megatron layout [s, b, h]
        return projected.transpose(0, 1)
