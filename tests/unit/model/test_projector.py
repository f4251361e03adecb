"""The projector's layer mix (``--encoder-layer-mix``, ``model/projector.py``): the softmax-weighted
sum of the layers, its refusal of a wrong layer count, and its weights in the Hugging Face export.
(Its gradients against the plain-torch reference at TP=2 x PP=2:
``tests/distributed/test_parallel_gradients.py``; checkpoints: ``test_checkpoint.py``.)"""

import pytest
import torch

from megatron_salm_mtp.convert.export import projector_tensors
from megatron_salm_mtp.model.projector import mix_layers


def test_the_mix_is_the_softmax_weighted_sum_and_starts_as_the_mean():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 3) for _ in range(3)]
    logits = torch.tensor([0.3, -1.2, 2.0])
    weights = torch.exp(logits) / torch.exp(logits).sum()
    expected = weights[0] * layers[0] + weights[1] * layers[1] + weights[2] * layers[2]
    torch.testing.assert_close(mix_layers(layers, logits), expected)
    torch.testing.assert_close(mix_layers(layers, torch.zeros(3)), torch.stack(layers).mean(0))


def test_a_wrong_number_of_layers_is_refused():
    with pytest.raises(ValueError, match='the layer mix has 3 weights and was given 2 layers'):
        mix_layers([torch.zeros(1, 2, 3)] * 2, torch.zeros(3))


def test_the_export_carries_the_mix_weights_beside_the_linear_layers():
    linear = {'audio_projector.mlp.encoder.linear_fc1.weight': torch.ones(4, 8),
              'audio_projector.mlp.encoder.linear_fc2.weight': torch.ones(4, 4),
              'audio_encoder.conv1.weight': torch.ones(1)}
    assert sorted(projector_tensors(linear)) == ['linear_fc1.weight', 'linear_fc2.weight']
    mixed = projector_tensors({**linear, 'audio_projector.layer_weights': torch.arange(3.0)})
    assert sorted(mixed) == ['layer_weights', 'linear_fc1.weight', 'linear_fc2.weight']
    assert torch.equal(mixed['layer_weights'], torch.arange(3.0))
