"""Megatron-style flags and YAML for the config sections (model, parallel, precision, kernels,
training, data).

Every section field is a flag (``--field-name``) and a flat YAML key (``field_name`` or
``field-name``) that goes to the one section declaring it; the help text is the field's docstring.
Precedence: defaults < ``--config`` YAML < flags given on the command line. Unknown flags and
unknown YAML keys are errors naming them. :meth:`RunConfig.validate` (``run_config.py``) runs
every check that needs no process group, tokenizer or model.
"""

import argparse
import os
import sys
from typing import Any

import yaml

from .config import ConfigError
from .config_checks import RunError, did_you_mean, one_of
from .flags import ALL_CHOICES, base_type, build_parser, fields
from .run_config import RunConfig


def _coerce(name: str, value, annotation, where: str):
    """A YAML value as the field's type; strings convert (``3e-4`` is a string to YAML), but
    ``3.7`` or ``true`` never pass as an int."""
    if value is None:
        return None
    base = base_type(annotation)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{where}: {name} must be true or false, got {value!r}')
    if base in (int, float) and isinstance(value, bool) or base is int and isinstance(value, float):
        raise ConfigError(f"{where}: {name} must be {'an integer' if base is int else 'a number'}, got {value!r}")
    try:
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{where}: {name} must be {base.__name__}, got {value!r}') from None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f'--config {path}: no such file') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'--config {path}: not valid YAML: {err}') from None
    if not isinstance(raw, dict):
        raise ConfigError(f'--config {path}: expected a mapping of flag names to values')
    known = fields()
    values = {}
    if 'mtp' in raw:
        block = raw.pop('mtp')
        raw.update(_nemo_mtp_block(block, raw, path))
    for key, value in raw.items():
        name = str(key).replace('-', '_')
        if name not in known:
            raise ConfigError(f'--config {path}: unknown key {key!r}{did_you_mean(name, known)}')
        values[name] = _coerce(name, value, known[name].annotation, f'--config {path}')
    return values


# NeMo speech models' `mtp:` block -> Megatron names.
NEMO_MTP_KEYS = {'num_nextn_predict_layers': 'mtp_num_layers',
                 'loss_scaling_factor': 'mtp_loss_scaling_factor',
                 'use_repeated_layer': 'mtp_use_repeated_layer',
                 'hybrid_override_pattern': 'mtp_layer_pattern'}


def _nemo_mtp_block(block, flat: dict[str, Any], path: str) -> dict[str, Any]:
    """Map ``mtp: {enabled, num_nextn_predict_layers, ...}``; a Megatron name given beside it
    with another value is a contradiction naming both. ``enabled: false`` means no MTP at all."""
    where = f'--config {path}'
    if not isinstance(block, dict):
        raise ConfigError(f'{where}: mtp must be a mapping (enabled, num_nextn_predict_layers, ...)')
    unknown = set(block) - set(NEMO_MTP_KEYS) - {'enabled'}
    if unknown:
        raise ConfigError(f'{where}: unknown key(s) in mtp: {sorted(unknown)}')
    mapped = {NEMO_MTP_KEYS[k]: v for k, v in block.items() if k != 'enabled'}
    enabled = block.get('enabled', True)
    if not enabled:
        if mapped.get('mtp_num_layers'):
            raise ConfigError(f"{where}: mtp.enabled is false but mtp.num_nextn_predict_layers is "
                              f"{mapped['mtp_num_layers']}")
        mapped['mtp_num_layers'] = None
    else:
        mapped.setdefault('mtp_num_layers', 1)
    for name, value in mapped.items():
        nemo = 'enabled' if name == 'mtp_num_layers' and not enabled else next(
            k for k, v in NEMO_MTP_KEYS.items() if v == name)
        for spelling in (name, name.replace('_', '-')):
            if spelling in flat and flat[spelling] != value and not (
                    name == 'mtp_num_layers' and not enabled and not flat[spelling]):
                shown = 'false' if nemo == 'enabled' else repr(value)
                raise ConfigError(f'{where}: mtp.{nemo}={shown} contradicts {spelling}={flat[spelling]!r}')
    return mapped


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Flags (and ``--config`` YAML) -> the run's sections, validated later."""
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    settings = _read_yaml(args.pop('config')) if 'config' in args else {}
    settings.update(args)
    for name, choices in ALL_CHOICES.items():  # before DataConfig checks its own, to name the nearest
        if name in settings:
            one_of(argparse.Namespace(**settings), name, choices)
    return RunConfig.from_settings(settings)


def exit_on_config_error(err: ConfigError) -> None:
    """One line on stderr, from one rank (every rank finds the same error), exit status 2."""
    exit_with_error(err, 2)


def exit_on_run_error(err: RunError) -> None:
    """As a configuration error, with exit status 1: the run had started."""
    exit_with_error(err, 1)


def exit_with_error(err: Exception, status: int) -> None:
    rank = os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))
    if rank == '0':
        print(f'error: {err}', file=sys.stderr, flush=True)
    sys.exit(status)
