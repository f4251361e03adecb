"""The Conformer convolution module in the audio encoder's layers (``--encoder-conv-kernel-size``).

A Whisper-shaped layer sees its neighbours only through attention; speech recognisers trained
from scratch on little data do better with a convolution over time beside it (Conformer, Gulati et
al. 2020; NeMo's FastConformer and ESPnet's encoders). Each layer then holds, between attention
and MLP, the residual branch

    x + Pointwise(SiLU(LayerNorm(Depthwise_k(GLU(Pointwise_2d(LayerNorm(x)))))))

(without the Conformer's second, macaron MLP). It sits in the slot Megatron-Core's
``TransformerLayer`` keeps for cross-attention, which an encoder leaves empty: the slot has the
norm, the call and the bias-dropout-add of a residual branch, so the layer (recompute, checkpoints,
both specs) stays core's. Its checkpoint names are therefore ``pre_cross_attn_layernorm`` and
``cross_attention``. The layer hands the slot its ``context_mask``: the encoder passes the padding
mask there, and padded frames are zeroed before the depthwise convolution, so an utterance
encodes the same whatever shares its batch. The module's weights are whole on every
tensor-parallel rank (the encoder's input is too: no sequence parallelism), like the stem's
convolutions.
"""

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from .specs import backend_for, transformer_layer_spec


class ConvolutionModule(MegatronModule):
    """The branch of the module docstring over ``[T, n, width]`` hidden states (already normed by
    the layer), returning ``(output, None)`` for the layer's bias-dropout-add."""

    def __init__(self, config: TransformerConfig, kernel_size: int, **_):
        super().__init__(config=config)
        width, dtype = config.hidden_size, config.params_dtype
        self.pointwise_in = torch.nn.Linear(width, 2 * width, dtype=dtype)
        self.depthwise = torch.nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2, groups=width,
                                         dtype=dtype)
        self.norm = torch.nn.LayerNorm(width, eps=config.layernorm_epsilon, dtype=dtype)
        self.pointwise_out = torch.nn.Linear(width, width, dtype=dtype)
        with torch.no_grad():
            config.init_method(self.pointwise_in.weight)
            config.output_layer_init_method(self.pointwise_out.weight)
            self.pointwise_in.bias.zero_()
            self.pointwise_out.bias.zero_()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        """``attention_mask`` [n, 1, 1, T]: True on padded frames (the encoder's padding mask)."""
        x = F.glu(self.pointwise_in(hidden_states), dim=-1)
        if attention_mask is not None:
            x = x.masked_fill(attention_mask[:, 0, 0, :].t()[..., None], 0.0)
        x = self.depthwise(x.permute(1, 2, 0)).permute(2, 0, 1)  # over time: [n, width, T]
        return self.pointwise_out(F.silu(self.norm(x))), None


def conformer_layer_spec(impl: str, kernel_size: int) -> ModuleSpec:
    """The encoder's bidirectional layer with the convolution module between attention and MLP."""
    spec = transformer_layer_spec(impl, causal=False)
    submodules = dataclasses.replace(
        spec.submodules,
        pre_cross_attn_layernorm=backend_for(impl).layer_norm(),
        cross_attention=ModuleSpec(module=ConvolutionModule, params={'kernel_size': kernel_size}),
        cross_attn_bda=get_bias_dropout_add)
    return dataclasses.replace(spec, submodules=submodules)
