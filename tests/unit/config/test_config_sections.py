"""The config sections: each field declared by one section with a docstring (its --help text),
every flag shown with help, a checkpoint's flat config.yaml as written before the sections still
read, and the one way to lay a checkpoint's model out for one device."""

import argparse
import dataclasses

import pytest
import yaml

from megatron_salm_mtp.checkpoint.metadata import model_config
from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.config import (
    SINGLE_DEVICE_LAYOUT,
    KernelConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
    SALMConfig,
    TrainConfig,
)
from megatron_salm_mtp.data.loader import DataConfig
from megatron_salm_mtp.flags import build_parser, declared_fields, docstrings, fields
from megatron_salm_mtp.megatron_lm.args import data_config_from_args
from megatron_salm_mtp.run_config import SHARED_WITH_DATA, RunConfig

MODEL_SECTIONS = (ModelConfig, ParallelConfig, PrecisionConfig, KernelConfig)
SECTIONS = MODEL_SECTIONS + (TrainConfig, DataConfig)
RUN_SECTIONS = {'model': SALMConfig, 'train': TrainConfig}

# config.yaml of a checkpoint saved before the sections (RunConfig.resolved() of a TP=2, PP=2 run
# with 128 mel bins, frame stack 2, the distributed optimizer and CTC on characters).
OLD_RUN_YAML = """\
{adam_beta1: 0.9, adam_beta2: 0.95, add_qkv_bias: false, async_save: false, audio_frame_stack: 2,
  audio_token: <|audio|>, audio_token_id: 300, batch_p2p_sync: false, bf16: true, bucket_window: 0,
  check_for_nan_in_loss_and_grad: true, clip_grad: 1.0, context_parallel_size: 1,
  cross_entropy_fusion_impl: te, cross_entropy_loss_fusion: true, ctc_loss_weight: 0.3, ctc_target_units:
  characters, default_prompt: Transcribe the audio., encoder_ffn_hidden_size: null, encoder_hidden_size:
  64, encoder_max_source_positions: 1500, encoder_num_attention_heads: 4, encoder_num_layers: 2,
  eval_interval: 50, eval_iters: 4, exit_duration_in_mins: null, exit_interval: null,
  expert_model_parallel_size: 1, ffn_hidden_size: 176, finetune: false, fp8_format: null,
  freeze_audio_encoder: false, full_sequence_logits: false, global_batch_size: 8,
  gradient_accumulation_fusion: true, head_chunk_rows: 0, hidden_size: 64, init_method_std: 0.02,
  kv_channels: null, load: null, log_dir: null, log_interval: 10, logging_level: null, lr: 0.0003,
  lr_decay_iters: null, lr_decay_style: cosine, lr_warmup_iters: 0, make_vocab_size_divisible_by: 128,
  max_consecutive_nan_skips: 5, max_duration: 30.0, micro_batch_size: 2, min_lr: 3.0e-05,
  moe_aux_loss_coeff: 0.0, moe_ffn_hidden_size: null, moe_grouped_gemm: false,
  moe_router_load_balancing_type: aux_loss, moe_router_topk: 2, moe_token_dispatcher_type: allgather,
  mtp_detach_trunk: false, mtp_layer_pattern: '*-', mtp_loss_scaling_factor: 0.1,
  mtp_mask_placeholder_paths: true, mtp_num_layers: 2, mtp_recompute: false, mtp_self_distillation: false,
  mtp_use_repeated_layer: false, n_mels: 128, no_load_optim: false, norm_epsilon: 1.0e-06,
  num_attention_heads: 4, num_experts: null, num_layers: 4, num_layers_per_virtual_pipeline_stage: null,
  num_mel_bins: 128, num_query_groups: 2, num_workers: 0, overlap_grad_reduce: true, overlap_param_gather:
  false, overwrite_save: false, pad_to_seq_length: true, pipeline_model_parallel_size: 2,
  position_embedding_type: rope, prescan: true, prompt_template: plain, qk_layernorm: false, rotary_base:
  10000.0, save: null, save_interval: null, seed: 7, seq_length: 320, sequence_parallel: true,
  spec_augment_freq_masks: 0, spec_augment_freq_width: 27, spec_augment_time_masks: 0,
  spec_augment_time_width: 0.05, stack: 2, strict_data: false, system_prompt: null,
  tensor_model_parallel_size: 2, tensorboard_dir: null, tokenizer_model: null, tokenizer_type: byte,
  train_iters: 100, train_manifest: train.jsonl, training_mode: joint, transformer_impl: null,
  untie_embeddings_and_output_weights: false, use_distributed_optimizer: true, valid_manifest: null,
  virtual_pipeline_model_parallel_size: null, vocab_size: 512, wandb_exp_name: null, wandb_project: null,
  weight_decay: 0.01}
"""


def _names(cls) -> set:
    return {f.name for f in declared_fields(cls)}


def test_each_field_is_declared_by_one_section():
    owners = {}
    for cls in SECTIONS:
        for name in _names(cls):
            if cls is DataConfig and name in SHARED_WITH_DATA:
                continue
            assert name not in owners, f'{name}: declared by {owners[name].__name__} and {cls.__name__}'
            owners[name] = cls
    # the data section's shared fields are set from an owner that exists, never flags of their own
    for name, (section, field) in SHARED_WITH_DATA.items():
        assert name in _names(DataConfig) and field in {f.name for f in dataclasses.fields(RUN_SECTIONS[section])}
    # SALMConfig is its four sections, declaring nothing itself
    assert _names(SALMConfig) == set()
    assert {f.name for f in dataclasses.fields(SALMConfig)} == set().union(*map(_names, MODEL_SECTIONS))


def test_every_field_has_a_docstring():
    for cls in SECTIONS:
        missing = _names(cls) - {name for name, doc in docstrings(cls).items() if doc}
        assert not missing, f'{cls.__name__}: fields without a docstring: {sorted(missing)}'


def test_every_flag_is_in_help_with_its_text():
    parser = build_parser()
    shown = {option: action.help for action in parser._actions for option in action.option_strings
             if action.help != argparse.SUPPRESS}
    text = ''.join(parser.format_help().split())  # as printed, without argparse's line breaks
    for name, flag in fields().items():
        option = '--' + name.replace('_', '-')
        assert flag.help and shown[option].startswith(flag.help), option
        assert option in text and ''.join(flag.help.split()) in text, option


def test_flat_keys_go_to_their_section():
    run = parse_args(['--use-distributed-optimizer', '--seq-length', '320', '--num-mel-bins', '128',
                      '--audio-frame-stack', '2', '--micro-batch-size', '2', '--global-batch-size', '8',
                      '--seed', '7', '--ctc-target-units', 'characters'])
    assert run.model.use_distributed_optimizer and not hasattr(run.train, 'use_distributed_optimizer')
    data = run.data
    assert (data.seq_length, data.n_mels, data.stack, data.micro_batch_size, data.global_batch_size, data.seed,
            data.ctc_target_units) == (320, 128, 2, 2, 8, 7, 'characters')


def test_old_flat_config_yaml_loads():
    stored = yaml.safe_load(OLD_RUN_YAML)
    run = RunConfig.from_settings(stored)
    resolved = run.resolved()
    assert {k: resolved[k] for k in stored} == stored  # every key read into its section, written back the same
    added = {k: v for k, v in resolved.items() if k not in stored}  # fields newer than the file: their defaults
    assert added == {k: v for k, v in RunConfig.from_settings({}).resolved().items() if k in added}
    cfg = model_config(stored)  # what --load, export and generate read
    assert cfg == run.model
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.sequence_parallel) == (2, 2, True)
    assert cfg.use_distributed_optimizer and cfg.overlap_grad_reduce and cfg.bf16
    assert (run.data.n_mels, run.data.stack, run.data.seq_length, run.train.seed) == (128, 2, 320, 7)


def test_megatron_lm_adapter_data_section_from_owners():
    args = argparse.Namespace(seq_length=320, num_mel_bins=128, audio_frame_stack=2, ctc_target_units='characters',
                              micro_batch_size=2, global_batch_size=8, seed=7, tokenizer_type=None, num_workers=3,
                              n_mels=None, stack=None)
    data = data_config_from_args(args)
    assert (data.seq_length, data.n_mels, data.stack, data.ctc_target_units, data.micro_batch_size,
            data.global_batch_size, data.seed, data.num_workers) == (320, 128, 2, 'characters', 2, 8, 7, 3)


def test_with_single_device_layout():
    trained = SALMConfig(num_layers=8, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                         sequence_parallel=True, num_layers_per_virtual_pipeline_stage=1,
                         use_distributed_optimizer=True, bf16=True, mtp_num_layers=2)
    trained.validate(world_size=4, num_microbatches=4)
    for tp in (1, 2):
        single = trained.with_single_device_layout(tensor_model_parallel_size=tp)
        assert {k: getattr(single, k) for k in SINGLE_DEVICE_LAYOUT} == dict(SINGLE_DEVICE_LAYOUT,
                                                                             tensor_model_parallel_size=tp)
        kept = {k: v for k, v in dataclasses.asdict(trained).items() if k not in SINGLE_DEVICE_LAYOUT}
        assert {k: v for k, v in dataclasses.asdict(single).items() if k not in SINGLE_DEVICE_LAYOUT} == kept
        single.validate(world_size=tp)
        assert single.virtual_pipeline_size is None
    assert trained.tensor_model_parallel_size == 2  # a copy; the trained config is unchanged


@pytest.mark.parametrize('section, check', [(ModelConfig, '_validate_model'), (ParallelConfig, '_validate_parallel'),
                                             (PrecisionConfig, '_validate_precision'),
                                             (KernelConfig, '_validate_kernels')])
def test_section_checks_need_only_their_section(section, check):
    """A section's own checks run on that section alone: they read no field of another."""
    getattr(section(), check)(*((False,) if section is ModelConfig else ()))
