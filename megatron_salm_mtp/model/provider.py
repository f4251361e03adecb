"""The one place a SALM chunk is built: the plugin's loop (``parallel/setup.py``), Megatron-LM's
``pretrain()`` (``megatron_lm/providers.py``) and decoding (``inference/loading.py``) all call
:func:`provide_salm`, which checks the kernel choices first (Megatron-Bridge's
``GPTModelProvider.provide()`` plays the same part).

Which pieces a rank builds (``pre_process``, ``post_process``, ``vp_stage``) is the caller's to say:
this module never looks at ranks. The SALM turns its SALMConfig into Megatron-Core's
TransformerConfigs through ``transformer_config.py``.
"""


from ..config import ConfigError, SALMConfig
from .salm import SALM
from .specs import TRANSFORMER_ENGINE


def validate_kernels(cfg: SALMConfig, impl: str) -> None:
    """ConfigError when ``cfg`` asks for kernels that the resolved transformer implementation
    ``impl`` does not have (FP8 runs in Transformer Engine's GEMMs only)."""
    if cfg.fp8_format and impl != TRANSFORMER_ENGINE:
        raise ConfigError(f'--fp8-format {cfg.fp8_format}: FP8 needs the Transformer Engine spec on a '
                          'GPU (--transformer-impl transformer_engine with TE importable and CUDA)')


def provide_salm(cfg: SALMConfig, impl: str, pre_process: bool = True, post_process: bool = True,
                 vp_stage: int | None = None) -> SALM:
    """A bare SALM chunk of ``cfg`` in the transformer implementation ``impl``, on the host, as
    initialised (moving, freezing and wrapping are the caller's)."""
    validate_kernels(cfg, impl)
    return SALM(cfg, impl, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
