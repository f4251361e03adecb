"""Speech-augmented LLMs with Multi-Token Prediction heads on Megatron-Core."""

__version__ = '0.1.0'
