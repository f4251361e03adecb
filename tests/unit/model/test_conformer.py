"""The Conformer convolution module of the audio encoder (``model/conformer.py``): the FLOPs the
training line credits to it are what torch's FLOP counter counts in its forward, and a Whisper
import or export refuses an encoder that has it. (Its gradients against the plain-torch reference
at TP=2 and DP=2: ``tests/distributed/test_encoder_ctc.py``; padded audio:
``test_model_units.py``.)"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.convert import hf_whisper
from megatron_salm_mtp.model.conformer import ConvolutionModule
from megatron_salm_mtp.model.transformer_config import encoder_transformer_config
from megatron_salm_mtp.training.flops import encoder_flops_per_frame
from tests.support.parallel_utils import tiny_config


def test_the_credited_flops_are_those_of_its_forward():
    cfg = tiny_config(encoder_conv_kernel_size=7)
    module = ConvolutionModule(encoder_transformer_config(cfg), 7)
    frames, batch = 11, 3
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(frames, batch, cfg.encoder_hidden_size))
    plain = cfg.replace(encoder_conv_kernel_size=0)
    credited = encoder_flops_per_frame(cfg, frames) - encoder_flops_per_frame(plain, frames)
    # Training is three forwards' worth; the module sits in every layer.
    assert credited == 3 * cfg.encoder_num_layers * counter.get_total_flops() / (frames * batch)


@pytest.mark.parametrize('convert', [lambda cfg: hf_whisper.encoder_recipes({}, cfg),
                                     hf_whisper.export_names], ids=['import', 'export'])
def test_whisper_conversion_refuses_convolution_modules(convert):
    with pytest.raises(ConfigError, match='a Whisper encoder has no convolution modules, the SALM has '
                                          '--encoder-conv-kernel-size 5'):
        convert(tiny_config(encoder_conv_kernel_size=5))
