"""Whisper-shaped audio encoder on a Megatron-Core ``TransformerBlock`` (with Conformer convolution
modules in its layers as an option, ``conformer.py``).

Layout, one to one with a Whisper encoder's weights: ``conv1`` (k=3) and ``conv2`` (k=3, stride 2)
with GELU, fixed sinusoidal ``embed_positions``, pre-norm bidirectional layers, final LayerNorm
(inside the block). Padded frames are zeroed after the stem, masked as attention keys and zeroed at
the output, so an utterance encodes the same whatever else shares its batch. ``encode`` also returns
lower layers' outputs through the final LayerNorm, for intermediate CTC (``ctc.py``) and the
projector's layer mix (``projector.py``).
"""

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from ..data.frames import encoder_frames
from .conformer import conformer_layer_spec
from .specs import block_spec


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's positional table: sines in the first half of the channels, cosines in the second."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


class AudioEncoder(MegatronModule):
    """``conv_kernel_size`` k > 0: Conformer convolution modules of k frames in its layers
    (``conformer.py``)."""

    def __init__(self, config: TransformerConfig, impl: str, num_mel_bins: int, max_positions: int,
                 conv_kernel_size: int = 0):
        super().__init__(config=config)
        width = config.hidden_size
        self.conv1 = torch.nn.Conv1d(num_mel_bins, width, kernel_size=3, padding=1, dtype=config.params_dtype)
        self.conv2 = torch.nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1,
                                     dtype=config.params_dtype)
        self.register_buffer('embed_positions', sinusoids(max_positions, width).to(config.params_dtype))
        self.max_positions = max_positions
        layer = conformer_layer_spec(impl, conv_kernel_size) if conv_kernel_size else None
        self.transformer = TransformerBlock(
            config=config, spec=block_spec(impl, config.num_layers, causal=False, layer=layer),
            pre_process=True, post_process=True)
        self.has_convolution = bool(conv_kernel_size)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """[n, mels, T] log-mel, [n] valid frames -> [n, T_enc, width] (zeros past each length)."""
        return self.encode(features, feature_lengths)[0]

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor, layers: Sequence[int] = ()):
        """(output, kept): ``forward``'s output and {k: the k-th layer's output (1-based, below the
        last) through the final LayerNorm, [n, T_enc, width] and zeroed alike} for k in ``layers``."""
        frame = torch.arange(features.shape[-1], device=features.device)
        mel_valid = frame[None, :] < feature_lengths[:, None].to(features.device)
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        # Zero the stem past each utterance, as the stride-2 conv's own padding would be: the last
        # frame must not depend on how much padding the batch's longest utterance brought.
        x = x * mel_valid[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [n, T_enc, width]
        steps = x.shape[1]
        if steps > self.max_positions:
            raise ValueError(f'audio of {steps} encoder frames exceeds encoder_max_source_positions='
                             f'{self.max_positions}')
        x = x + self.embed_positions[:steps]
        lengths = encoder_frames(feature_lengths.to(x.device))
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # [n, T_enc]
        padding_mask = ~valid[:, None, None, :]  # Megatron convention: True = masked out
        kept = {}
        # The block runs its layers itself: read the ones asked for as they run.
        hooks = [self.transformer.layers[k - 1].register_forward_hook(functools.partial(_keep, kept, k))
                 for k in layers]
        try:
            # The convolution modules read the padding mask where a layer hands cross-attention its own.
            hidden = self.transformer(hidden_states=x.transpose(0, 1).contiguous(), attention_mask=padding_mask,
                                      context_mask=padding_mask if self.has_convolution else None)
        finally:
            for hook in hooks:
                hook.remove()
        kept = {k: self.transformer.final_layernorm(h).transpose(0, 1) * valid[..., None] for k, h in kept.items()}
        return hidden.transpose(0, 1) * valid[..., None], kept


def _keep(kept: dict, layer: int, module, args, output) -> None:
    """Forward hook: a layer's output hidden states [T_enc, n, width] into ``kept[layer]``."""
    kept[layer] = output[0] if isinstance(output, tuple) else output
