"""The SALM under Megatron-LM's own ``pretrain()`` and argument parser (megatron-core 0.19.x).

Teams with Megatron-LM launch scripts keep them: ``python -m megatron_salm_mtp.megatron_lm.pretrain``
takes Megatron-LM's flags plus the plugin's SALM and data flags (``args.py``), and hands
Megatron-LM a model provider, a forward step and a dataset provider (``providers.py``,
``data.py``). Megatron-LM then owns initialisation, the optimizer, the schedule, logging and
checkpoints; the SALM, its loss and the speech data are the plugin's.

Only the 0.19 API is supported: ``pretrain(config_container, dataset_provider, model_type,
forward_step, model_provider=...)`` with the container built by
``argument_utils.pretrain_cfg_container_from_args``. 0.16.1 ships no ``megatron.training`` at
all, and 0.17/0.18 take the providers first; on those, use ``python -m megatron_salm_mtp.train``.

This module imports nothing from Megatron, so the version check can run first.
"""

import importlib.util
import inspect

PLUGIN_ENTRY = 'python -m megatron_salm_mtp.train'


class MegatronTrainingUnavailable(RuntimeError):
    """The installed megatron-core has no ``megatron.training`` this adapter can drive."""


def _installed_version() -> str:
    from megatron.core.package_info import __version__
    return __version__


def _pretrain_takes_config_container() -> bool:
    """0.19's ``pretrain(cfg_container, ...)``, whose container ``argument_utils`` builds."""
    if importlib.util.find_spec('megatron.training.argument_utils') is None:
        return False
    from megatron.training.training import pretrain
    return next(iter(inspect.signature(pretrain).parameters)) == 'cfg_container'


def require_megatron_training() -> None:
    """Raise :class:`MegatronTrainingUnavailable` naming the installed release and the plugin's
    own entry point unless megatron.training with 0.19's ``pretrain`` API is importable."""
    if importlib.util.find_spec('megatron.training') is None:
        raise MegatronTrainingUnavailable(
            f"megatron.training is not importable: megatron-core {_installed_version()} does not "
            "ship it (0.17+ wheels do; this adapter needs 0.19.x). Train with the plugin's own "
            f"loop instead: {PLUGIN_ENTRY} (same SALM and data flags).")
    if not _pretrain_takes_config_container():
        raise MegatronTrainingUnavailable(
            f"megatron-core {_installed_version()}'s megatron.training predates the 0.19 pretrain() "
            "API (a config container first, built by argument_utils.pretrain_cfg_container_from_args),"
            f" which is the one this adapter supports. Use megatron-core 0.19.x or {PLUGIN_ENTRY}.")
