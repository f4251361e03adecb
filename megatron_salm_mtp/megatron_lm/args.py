"""Megatron-LM's argument parser, extended by the SALM and data flags it lacks.

Flags keep the names of the plugin's own CLI (``python -m megatron_salm_mtp.train --help``). Where
Megatron-LM already has a flag of that name (``--num-layers``, ``--mtp-num-layers``, ``--seq-length``,
``--bf16``, ...), Megatron-LM's flag and default are the ones used, so a Megatron-LM script means
the same here. Three names need care:

* ``--encoder-num-layers`` is Megatron-LM's (T5) encoder depth, which ``validate_args`` refuses
  beside ``--num-layers`` and then overwrites with it. It sets the audio encoder's depth, as in the
  plugin's CLI: its value is set aside before Megatron-LM validates.
* ``--tokenizer-type`` keeps Megatron-LM's names: ``HuggingFaceTokenizer`` and
  ``(GPT)SentencePieceTokenizer``/``Llama2Tokenizer`` select the plugin's ``huggingface`` and
  ``sentencepiece`` tokenizers; without the flag, the plugin's ``byte`` tokenizer. (Megatron-LM
  parses the command line again inside ``pretrain()``, without extra flags, so the flag cannot take
  other values.) The plugin's tokenizer (audio placeholder, prompt specials) is the one built;
  Megatron-LM's is not.
* ``--num-query-groups`` counts only with ``--group-query-attention``, as in Megatron-LM.

The SALM's LLM is SwiGLU + RMSNorm, without linear biases or dropout; Megatron-LM flags that ask
for another architecture are refused rather than silently ignored.
"""

import argparse
import dataclasses
import sys

from ..config import ENCODER_CTC, ConfigError, SALMConfig
from ..data.loader import DataConfig
from ..data.tokenizer import Tokenizer
from ..flags import base_type, fields as flag_fields
from ..run_config import SHARED_WITH_DATA

MEGATRON_TOKENIZERS = {'HuggingFaceTokenizer': 'huggingface', 'SentencePieceTokenizer': 'sentencepiece',
                       'GPTSentencePieceTokenizer': 'sentencepiece', 'Llama2Tokenizer': 'sentencepiece'}
TRAIN_FLAGS = ('train_manifest', 'valid_manifest', 'training_mode')
"""The plugin's training settings that apply under pretrain(); Megatron-LM owns the others."""
AUDIO_ENCODER_LAYERS = 'salm_audio_encoder_num_layers'
"""Where ``--encoder-num-layers`` is kept from Megatron-LM's validation."""
CUDA_GRAPH_FIELDS = ('cuda_graph_impl', 'cuda_graph_scope', 'cuda_graph_warmup_steps')
"""Megatron-LM's own CUDA-graph flags, which pretrain() acts on itself: the SALM's stay off there."""
SALM_DEFAULTS = {'dataloader_type': 'external'}
"""Megatron-LM defaults the adapter changes: the dataset provider returns iterators that collate
speech batches themselves (Megatron-LM's own loaders cannot)."""

# What the SALM's LLM is, as (Megatron-LM dest, required value, flag that sets it).
LLM_ARCHITECTURE = (('normalization', 'RMSNorm', '--normalization RMSNorm'),
                    ('swiglu', True, '--swiglu'),
                    ('add_bias_linear', False, '--disable-bias-linear'),
                    ('hidden_dropout', 0.0, '--hidden-dropout 0'),
                    ('attention_dropout', 0.0, '--attention-dropout 0'))


def _plugin_field_names() -> list[str]:
    names = {f.name for cls in (SALMConfig, DataConfig) for f in dataclasses.fields(cls)}
    return [name for name in flag_fields() if name in names or name in TRAIN_FLAGS]


def add_salm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM's ``extra_args_provider``: the plugin's flags that Megatron-LM lacks."""
    existing = parser._option_string_actions  # argparse has no public lookup of added flags
    group = parser.add_argument_group(title='SALM (megatron_salm_mtp)')
    fields = flag_fields()
    for name in _plugin_field_names():
        flag = '--' + name.replace('_', '-')
        if flag in existing or '--no-' + flag[2:] in existing:  # e.g. --no-gradient-accumulation-fusion
            continue
        annotation, default, help_text = fields[name].annotation, fields[name].default, fields[name].help
        if base_type(annotation) is bool:
            group.add_argument(flag, dest=name, action='store_true', default=default, help=help_text)
            group.add_argument('--no-' + flag[2:], dest=name, action='store_false', help=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=name, type=base_type(annotation), default=default,
                               help=help_text)
    return parser


def parse_megatron_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Megatron-LM's parse, validation and global state (timers, microbatch calculator, writers)
    for ``argv`` (default: the command line), without building Megatron-LM's tokenizer."""
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.global_vars import set_global_variables

    saved_argv = sys.argv
    if argv is not None:
        sys.argv = [saved_argv[0]] + list(argv)
    try:
        args = parse_args(extra_args_provider=add_salm_args)
    finally:
        sys.argv = saved_argv
    setattr(args, AUDIO_ENCODER_LAYERS, args.encoder_num_layers)
    args.encoder_num_layers = None
    validate_args(args, SALM_DEFAULTS)
    check_salm_args(args)
    # The SALM's objective is per supervised token over the global batch (model/loss.py); its
    # TransformerConfig sets this whatever the flag says, and Megatron-LM's reports follow it.
    args.calculate_per_token_loss = True
    set_global_variables(args, build_tokenizer=False)
    return args


def check_salm_args(args: argparse.Namespace) -> None:
    """Refuse Megatron-LM settings the SALM would not honour, naming the flags to pass."""
    wrong = [flag for dest, value, flag in LLM_ARCHITECTURE if getattr(args, dest) != value]
    if wrong:
        raise ConfigError("the SALM's LLM is SwiGLU + RMSNorm without linear biases or dropout; "
                          f"pass {' '.join(wrong)}")
    if args.fp16:
        raise ConfigError('--fp16 is not supported by the SALM: use --bf16')
    if args.dataloader_type != 'external':
        raise ConfigError(f"--dataloader-type {args.dataloader_type}: the SALM's dataset provider "
                          "returns its own iterators; use external (the default here)")
    if args.virtual_pipeline_model_parallel_size is not None:
        raise ConfigError('virtual pipeline stages are not supported by this adapter yet (drop '
                          '--num-layers-per-virtual-pipeline-stage / --num-virtual-stages-per-pipeline-rank)')
    # pretrain() divides by both where they are None: its sample targets by --eval-interval, its
    # final save's test by --save-interval.
    if args.eval_interval is None:
        raise ConfigError("--eval-interval is required by Megatron-LM's pretrain() (with --eval-iters 0 "
                          "it only sizes Megatron-LM's sample targets)")
    if args.save and args.save_interval is None:
        raise ConfigError("--save needs --save-interval under Megatron-LM's pretrain()")
    if not args.train_manifest:
        raise ConfigError('--train-manifest is required')
    if args.ctc_loss_weight:
        raise ConfigError("--ctc-loss-weight is not supported under Megatron-LM's pretrain() yet (its "
                          "loss lives on the first pipeline stage); train with "
                          "python -m megatron_salm_mtp.train")
    if getattr(args, 'cuda_graph_impl', 'none') != 'none':
        raise ConfigError(f"--cuda-graph-impl {args.cuda_graph_impl} is not supported under Megatron-LM's "
                          "pretrain() (its graph helper cannot find the SALM's layers); train with "
                          "python -m megatron_salm_mtp.train")
    if args.training_mode == ENCODER_CTC:
        raise ConfigError("--training-mode encoder_ctc is not supported under Megatron-LM's pretrain() (it "
                          "trains on the CTC loss alone); train with python -m megatron_salm_mtp.train")
    if args.eval_iters and args.eval_interval and not args.valid_manifest:
        raise ConfigError('--valid-manifest is required unless --eval-iters 0')


def tokenizer_type(args: argparse.Namespace) -> str:
    """The plugin's tokenizer kind for Megatron-LM's ``--tokenizer-type`` (none: byte)."""
    if args.tokenizer_type is None:
        return 'byte'
    if args.tokenizer_type in MEGATRON_TOKENIZERS:
        return MEGATRON_TOKENIZERS[args.tokenizer_type]
    raise ConfigError(f"--tokenizer-type {args.tokenizer_type}: the SALM takes "
                      f"{', '.join(MEGATRON_TOKENIZERS)}, or no --tokenizer-type for its byte tokenizer")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The plugin's data settings from Megatron-LM's and the added flags; the fields another
    section owns (sequence length, batch sizes, seed, mel bins, frame stacking) from its flag."""
    owners = {name: owner for name, (_, owner) in SHARED_WITH_DATA.items()}
    values = {f.name: getattr(args, owners.get(f.name, f.name)) for f in dataclasses.fields(DataConfig)
              if getattr(args, owners.get(f.name, f.name), None) is not None}
    values.update(tokenizer_type=tokenizer_type(args))
    return DataConfig(**values)


def salm_config_from_args(args: argparse.Namespace, tokenizer: Tokenizer) -> SALMConfig:
    """SALMConfig from validated Megatron-LM args: every field by its name where Megatron-LM (or
    the added flags) set it, vocabulary and placeholder id from the plugin's tokenizer."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SALMConfig)
              if getattr(args, f.name, None) is not None}
    values.update(vocab_size=tokenizer.vocab_size, audio_token_id=tokenizer.audio_token_id,
                  num_query_groups=args.num_query_groups if args.group_query_attention else None)
    for name in CUDA_GRAPH_FIELDS:  # Megatron-LM's (a list of scopes, say): refused above unless off
        values.pop(name, None)
    if getattr(args, AUDIO_ENCODER_LAYERS) is not None:
        values['encoder_num_layers'] = getattr(args, AUDIO_ENCODER_LAYERS)
    else:
        values.pop('encoder_num_layers', None)  # Megatron-LM's copy of --num-layers
    cfg = SALMConfig(**values)
    cfg.validate(args.world_size)
    return cfg

