"""The training flags: one per field of the config sections (model, parallel, precision, kernels,
training, data).

A field's help text is its attribute docstring; ``--help`` groups the flags by the
``# --- Title ---`` comments of the sections (a title met twice is one group), shows each field's
choices, and shows the ``--no-X`` form of every switch that is on by default. Each flag is declared
by one section; the data section's fields that another section owns (``seq_length``, ...) are set
from it (``run_config.SHARED_WITH_DATA``).
"""

import argparse
import ast
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

from .config import CHOICES, SECTIONS as MODEL_SECTIONS, ConfigError, TrainConfig
from .config_checks import did_you_mean
from .data.loader import DataConfig
from .data.prompts import TEMPLATES
from .data.tokenizer import TOKENIZER_TYPES
from .run_config import SHARED_WITH_DATA

DERIVED = {'vocab_size', 'audio_token_id'}
"""Model fields the tokenizer sets (the vocabulary and the placeholder's id): not flags."""
FLAG_SECTIONS = MODEL_SECTIONS + (TrainConfig, DataConfig)
"""The dataclasses whose fields are the flags, in --help order."""
ALL_CHOICES = {**CHOICES, 'prompt_template': TEMPLATES, 'tokenizer_type': TOKENIZER_TYPES + ('hf', 'spm')}
_TITLE = re.compile(r'^\s*# --- (.+?) ---')
_FIELD = re.compile(r'^\s+(\w+): [^=]+=')


@dataclass
class Flag:
    annotation: Any
    default: Any
    help: str
    group: str


def docstrings(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of the fields ``cls`` declares,
    read from its source."""
    docs = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = ' '.join(following.value.value.split())
    return docs


def _groups(cls) -> dict[str, str]:
    """field -> its section title (before any title: the section's name)."""
    groups, title = {}, cls.__name__.replace('Config', '')
    for line in inspect.getsource(cls).splitlines():
        heading, field = _TITLE.match(line), _FIELD.match(line)
        if heading:
            title = heading.group(1)
        elif field:
            groups[field.group(1)] = title
    return groups


def declared_fields(cls) -> list:
    """The fields ``cls`` declares itself (not those of the sections it extends)."""
    return [f for f in dataclasses.fields(cls) if f.name in cls.__dict__.get('__annotations__', {})]


def fields() -> dict[str, Flag]:
    """name -> Flag, from the one section that declares it."""
    out = {}
    for cls in FLAG_SECTIONS:
        hints, docs, groups = typing.get_type_hints(cls), docstrings(cls), _groups(cls)
        for field in declared_fields(cls):
            if field.name in DERIVED or cls is DataConfig and field.name in SHARED_WITH_DATA:
                continue
            if field.name in out:
                raise ConfigError(f'{field.name} is declared by two config sections')
            out[field.name] = Flag(hints[field.name], field.default, docs.get(field.name, ''), groups[field.name])
    return out


def base_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


class FlagParser(argparse.ArgumentParser):
    """argparse's errors as one :class:`ConfigError` line (no usage dump, printed by one rank),
    naming the nearest flag for an unknown one."""

    def error(self, message):
        unknown = 'unrecognized arguments: '
        if message.startswith(unknown):
            words = [word.split('=')[0] for word in message[len(unknown):].split() if word.startswith('--')]
            hints = {word: did_you_mean(word, self._option_string_actions) for word in words}
            hints = {word: hint for word, hint in hints.items() if hint}
            if len(hints) == 1:
                message += next(iter(hints.values()))
            elif hints:
                message += ' (' + '; '.join(f'{word}: {hint[2:-1]}' for word, hint in hints.items()) + ')'
        raise ConfigError(message)


def _add(group, name: str, flag: Flag) -> None:
    option, kind = '--' + name.replace('_', '-'), base_type(flag.annotation)
    shown = f'{flag.help} (default: {flag.default})'.lstrip()
    if kind is bool and flag.default is True:  # on by default: what matters is how to turn it off
        group.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, help=shown)
    elif kind is bool:
        group.add_argument(option, dest=name, action='store_true', help=shown)
        group.add_argument('--no-' + option[2:], dest=name, action='store_false', help=argparse.SUPPRESS)
    else:
        choices = [c for c in ALL_CHOICES.get(name, ()) if c is not None]
        metavar = '{' + ','.join(choices) + '}' if choices else kind.__name__.upper()
        group.add_argument(option, dest=name, type=kind, help=shown, metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog='python -m megatron_salm_mtp.train', argument_default=argparse.SUPPRESS,
        usage='%(prog)s [--config FILE.yaml] [--FLAG VALUE ...]',
        description='Train a speech-augmented LLM with MTP heads on Megatron-Core. Every flag is also a '
                    'key of the --config YAML (defaults < YAML < command line).')
    parser.add_argument('--config', help='YAML file setting any of the flags below (by name)')
    groups = {}
    for name, flag in fields().items():
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        _add(groups[flag.group], name, flag)
    return parser
