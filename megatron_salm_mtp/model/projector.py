"""Audio projector: stack neighbouring encoder frames, then Megatron-Core's ``MultimodalProjector``.

Stacking ``s`` frames of width d into one vector of width s*d lowers the token rate (50 Hz ->
12.5 Hz for s=4) before the 2-layer GELU MLP maps it to the LLM width. With a layer mix
(``--encoder-layer-mix``) the frames are a softmax-weighted sum of every encoder layer's output,
one learnt weight per layer (SUPERB's weighted sum), before the stacking.
"""

from collections.abc import Sequence

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


def mix_layers(layers: Sequence[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """sum_l softmax(logits)_l x layers[l]: one weight per layer, added one layer at a time (no
    [L, n, T, d] stack beside the layers autograd keeps anyway)."""
    if len(layers) != logits.numel():
        raise ValueError(f'the layer mix has {logits.numel()} weights and was given {len(layers)} layers')
    weights = logits.float().softmax(0).to(layers[0].dtype)
    mixed = weights[0] * layers[0]
    for weight, layer in zip(weights[1:], layers[1:]):
        mixed = mixed + weight * layer
    return mixed


class AudioProjector(MegatronModule):
    """``mixed_layers`` L > 0: the projector mixes the outputs of the encoder's L layers; the
    weights start equal (zero logits) and are whole on every rank."""

    def __init__(self, config: TransformerConfig, impl: str, encoder_width: int, stack: int,
                 mixed_layers: int = 0):
        super().__init__(config=config)
        backend = backend_for(impl)
        self.stack = stack
        self.layer_weights = None
        if mixed_layers:
            self.layer_weights = torch.nn.Parameter(torch.zeros(mixed_layers, dtype=config.params_dtype))
        self.mlp = MultimodalProjector(
            config, MLPSubmodules(linear_fc1=backend.column_parallel_linear(),
                                  linear_fc2=backend.row_parallel_linear()),
            projector_type='mlp', input_size=stack * encoder_width)

    def forward(self, frames: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """[n, T_enc, d_enc] -> [n, ceil(T_enc/stack), hidden]; with a layer mix, every encoder
        layer's output, first to last."""
        if self.layer_weights is not None:
            frames = mix_layers(frames, self.layer_weights)
        stacked = stack_frames(frames, self.stack)
        n, steps, width = stacked.shape
        projected = self.mlp(stacked.transpose(0, 1).contiguous())  # Megatron layout [s, b, h]
        return projected.transpose(0, 1)
