"""The training flags: one per field of the three config dataclasses (model, training, data).

A field's help text is its attribute docstring (or, where it has none, the comment on its line);
``--help`` groups the flags by the ``# --- Title ---`` comments of the dataclasses (a title met
twice is one group), shows each field's choices, and shows the ``--no-X`` form of every switch
that is on by default. A field that two dataclasses share (``seq_length``, ...) is one flag.
"""

import argparse
import ast
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict

from .config import CHOICES, ConfigError, SALMConfig, TrainConfig
from .config_checks import did_you_mean
from .data.loader import DataConfig
from .data.prompts import TEMPLATES
from .data.tokenizer import TOKENIZER_TYPES

# Derived rather than set: the tokenizer fixes the vocabulary and placeholder id, the model's
# mel bins and frame stacking fix the data side's.
DERIVED = {'vocab_size', 'audio_token_id', 'n_mels', 'stack'}
SECTIONS = (('model', SALMConfig), ('train', TrainConfig), ('data', DataConfig))
ALL_CHOICES = {**CHOICES, 'prompt_template': TEMPLATES, 'tokenizer_type': TOKENIZER_TYPES + ('hf', 'spm')}
FIRST_GROUP = {SALMConfig: 'Model', TrainConfig: 'Training', DataConfig: 'Data'}  # before any title
_TITLE = re.compile(r'^\s*# --- (.+?) ---')
_FIELD = re.compile(r'^\s+(\w+): [^=]+=[^#]*(?:#\s*(.*))?$')


@dataclass
class Flag:
    annotation: Any
    default: Any
    help: str
    group: str


def _docstrings(cls) -> Dict[str, str]:
    """Attribute docstrings (the string literal after each field), read from the source."""
    docs = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = ' '.join(following.value.value.split())
    return docs


def _groups_and_comments(cls) -> tuple:
    """(field -> its section title, field -> the comment on its line)."""
    groups, comments, title = {}, {}, FIRST_GROUP[cls]
    for line in inspect.getsource(cls).splitlines():
        heading, field = _TITLE.match(line), _FIELD.match(line)
        if heading:
            title = heading.group(1)
        elif field:
            groups[field.group(1)] = title
            if field.group(2):
                comments[field.group(1)] = field.group(2)
    return groups, comments


def fields() -> Dict[str, Flag]:
    """name -> Flag; the first dataclass that defines a name gives its default, help and group."""
    out = {}
    for _, cls in SECTIONS:
        hints, docs = typing.get_type_hints(cls), _docstrings(cls)
        groups, comments = _groups_and_comments(cls)
        for field in dataclasses.fields(cls):
            if field.name not in DERIVED and field.name not in out:
                out[field.name] = Flag(hints[field.name], field.default,
                                       docs.get(field.name, comments.get(field.name, '')),
                                       groups.get(field.name, FIRST_GROUP[cls]))
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
