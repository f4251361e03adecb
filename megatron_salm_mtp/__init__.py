"""Speech-augmented LLMs with Multi-Token Prediction heads on Megatron-Core."""

from .compat.quiet import silence_optional_package_notices

silence_optional_package_notices()

__version__ = '0.1.0'
