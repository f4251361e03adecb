"""The run's settings by concern, Megatron-LM names, one attribute docstring per field (its
``--help`` text), each field declared in exactly one section:

- ``model.py``     ``ModelConfig``: the architecture (what a checkpoint's weights are)
- ``parallel.py``  ``ParallelConfig``: the layout over devices and data-parallel options
- ``precision.py`` ``PrecisionConfig`` and ``KernelConfig``: numerics, kernels, memory trade-offs
- ``salm.py``      ``SALMConfig``: the four above, what the model is built from, checked together
- ``train.py``     ``TrainConfig``: schedule, optimiser, logging, checkpoints

The data section is ``data.loader.DataConfig``; ``run_config.RunConfig`` holds one run's sections.
"""

from ..config_checks import ConfigError
from .choices import CHOICES, ENCODER_CTC, TRAINING_MODES
from .model import ModelConfig
from .parallel import SINGLE_DEVICE_LAYOUT, ParallelConfig
from .precision import KernelConfig, PrecisionConfig
from .salm import SECTIONS, SALMConfig
from .train import TrainConfig

__all__ = ['CHOICES', 'ENCODER_CTC', 'SECTIONS', 'SINGLE_DEVICE_LAYOUT', 'TRAINING_MODES', 'ConfigError',
           'KernelConfig', 'ModelConfig', 'ParallelConfig', 'PrecisionConfig', 'SALMConfig', 'TrainConfig']
