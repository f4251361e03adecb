"""Type and range checks that the config dataclasses' ``validate()`` share.

Each failure is a :class:`ConfigError` naming the flag, raised before any process group exists:
a value that cannot work (``--micro-batch-size 0``, ``num_layers: 3.7`` in YAML) must not pass
silently or surface as a crash after the model is built.
"""

import dataclasses
import difflib
import typing
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the flag."""


class RunError(RuntimeError):
    """What stops a run that had started (a checkpoint that could not be written): its message is
    the one line the entry point prints, from one rank, before exiting with status 1."""


def flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def _base_type(annotation) -> tuple:
    """(type, optional) of a field annotation such as ``Optional[int]`` or ``str | None``."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


_KINDS = {int: ('an integer', lambda v: isinstance(v, int) and not isinstance(v, bool)),
          float: ('a number', lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
          bool: ('true or false', lambda v: isinstance(v, bool)),
          str: ('a string', lambda v: isinstance(v, str))}


def check_types(config) -> None:
    """Every field holds its annotated type: ints are ints (3.7 is not 3, and a bool is not 1),
    floats are numbers, bools are bools; None only where the field is Optional."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        base, optional = _base_type(hints[field.name])
        if value is None:
            if not optional:
                raise ConfigError(f'{flag(field.name)} must be set')
            continue
        kind, accepts = _KINDS.get(base, ('', lambda v: True))
        if not accepts(value):
            raise ConfigError(f'{flag(field.name)} must be {kind}, got {value!r}')


def at_least(config, bound, names: Iterable[str]) -> None:
    """Each named field is None (unset) or >= ``bound``."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < bound:
            raise ConfigError(f'{flag(name)} must be >= {bound}, got {value}')


def positive(config, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ConfigError(f'{flag(name)} must be positive, got {value}')


def below_one(config, names: Iterable[str]) -> None:
    """Each named field lies in [0, 1) (NaN refused)."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ConfigError(f'{flag(name)} must be in [0, 1), got {value}')


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' naming the closest candidate to a misspelt word, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def one_of(config, name: str, choices: tuple) -> None:
    value = getattr(config, name)
    if value not in choices:
        shown = ', '.join('none' if c is None else str(c) for c in choices)
        named = [c for c in choices if c is not None]
        raise ConfigError(f'{flag(name)} {value!r}: choose {shown}{did_you_mean(value, named)}')
