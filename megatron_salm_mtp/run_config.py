"""One run's settings: the model, training and data sections that ``cli.py`` fills from flags and
YAML, and the checks between them that need no process group, tokenizer or model."""

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .config import ENCODER_CTC, ConfigError, SALMConfig, TrainConfig
from .config_checks import at_least, check_types
from .data.ctc_targets import PHONEMES_FIELD, first_line_without_phonemes
from .data.frames import HOP_LENGTH, SAMPLE_RATE
from .data.loader import DataConfig
from .data.manifest import ManifestError

SHARED_WITH_DATA = {'seq_length': ('model', 'seq_length'), 'n_mels': ('model', 'num_mel_bins'),
                    'stack': ('model', 'audio_frame_stack'), 'ctc_target_units': ('model', 'ctc_target_units'),
                    'micro_batch_size': ('train', 'micro_batch_size'),
                    'global_batch_size': ('train', 'global_batch_size'), 'seed': ('train', 'seed')}
"""DataConfig's fields that another section owns, as (section, field): the data loader reads them
from DataConfig, but they are set from their owner, never flags or YAML keys of the data section."""


def _check_audio_features(model: SALMConfig) -> None:
    """The features a run's data section makes for the audio encoder: Whisper's log-mels, stacked
    (a model alone may take others: the tests' tiny ones do)."""
    if model.num_mel_bins not in (80, 128):
        raise ConfigError(f"--num-mel-bins {model.num_mel_bins}: the log-mel features are "
                          "Whisper's, 80 or 128 bins")
    at_least(model, 1, ('audio_frame_stack',))


def _check_phonemes_field(flag: str, manifest: str) -> None:
    """--ctc-target-units phonemes reads each line's ``phonemes`` field: a manifest made without
    it is refused at start (its first transcription line tells; a later line without it is skipped
    and counted by the dataset)."""
    try:
        line = first_line_without_phonemes(manifest)
    except ManifestError as err:
        raise ConfigError(f'{flag} {err}') from None
    if line is not None:
        raise ConfigError(f"{flag} {manifest}:{line}: no '{PHONEMES_FIELD}' field, which --ctc-target-units "
                          "phonemes trains the CTC head on (espeak-ng's IPA of the utterance: "
                          "`espeak-ng -v VOICE -q --ipa TEXT`); remake the manifest with it, or choose other units")


def section_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings (flat, by field name) that dataclass ``cls`` declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in settings.items() if k in names}


@dataclass
class RunConfig:
    model: SALMConfig
    train: TrainConfig
    data: DataConfig

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> 'RunConfig':
        """Flat settings (flags and YAML keys by field name) -> the sections, each name to the
        section that declares it; the data section's shared fields from their owners, whose
        types and audio features are checked first (the data section checks its values as it
        is made)."""
        owners = {'model': SALMConfig(**section_settings(SALMConfig, settings)),
                  'train': TrainConfig(**section_settings(TrainConfig, settings))}
        for section in owners.values():
            check_types(section)
        _check_audio_features(owners['model'])
        data = section_settings(DataConfig, settings)
        data.update({name: getattr(owners[section], owner) for name, (section, owner) in SHARED_WITH_DATA.items()})
        try:
            data = DataConfig(**data)
        except ValueError as err:  # DataConfig checks its values as it is made
            raise ConfigError(str(err)) from None
        return cls(owners['model'], owners['train'], data)

    def validate(self) -> None:
        """Types and ranges of every section, what the sections imply for each other, and the
        manifests named; the trainer re-checks what needs the world size and the tokenizer."""
        check_types(self.data)
        self.model.validate(vocabulary=False)
        self.train.validate()
        _check_audio_features(self.model)
        if self.train.training_mode == 'head_only' and not self.model.mtp_depths:
            raise ConfigError('--training-mode head_only trains the MTP heads only: it needs --mtp-num-layers > 0')
        if self.train.training_mode == ENCODER_CTC:
            self._validate_encoder_ctc()
        # The encoder's sinusoidal positions cover 2 mel frames each (stride-2 stem), 10 ms per frame.
        seconds = self.model.encoder_max_source_positions * 2 * HOP_LENGTH / SAMPLE_RATE
        if self.data.max_duration is None or self.data.max_duration > seconds:
            raise ConfigError(f'--max-duration {self.data.max_duration}: the audio encoder takes at most '
                              f'{seconds:g} s (--encoder-max-source-positions '
                              f'{self.model.encoder_max_source_positions}); a longer clip would crash training')
        self._validate_inputs()
        self._validate_cuda_graphs()

    def _validate_cuda_graphs(self) -> None:
        """Graphed layers replay fixed shapes, and core records a layer's graph from its autograd:
        every row padded to --seq-length, and a trunk that runs with gradients."""
        impl = self.model.cuda_graph_impl
        if impl == 'none':
            return
        if not self.data.pad_to_seq_length:
            raise ConfigError(f'--cuda-graph-impl {impl} needs fixed shapes: drop --no-pad-to-seq-length')
        if self.data.pack_sequences:
            raise ConfigError(f'--cuda-graph-impl {impl} replays fixed attention layouts; packed rows change '
                              'their utterance boundaries every step: add --no-pack-sequences')
        if self.train.training_mode in ('head_only', ENCODER_CTC):
            raise ConfigError(f"--cuda-graph-impl {impl} graphs the LLM's layers in training, which "
                              f"--training-mode {self.train.training_mode} runs without gradients or not at all")

    def _validate_encoder_ctc(self) -> None:
        """Stage 1 trains the encoder on CTC alone: it needs the CTC head, runs no LLM (so no MTP
        heads to train), and the encoder lives on the first pipeline stage."""
        model = self.model
        if not model.ctc_enabled:
            raise ConfigError('--training-mode encoder_ctc trains the audio encoder on its CTC loss: it needs '
                              '--ctc-loss-weight > 0 (any value: the CTC loss is then the whole objective)')
        if model.pipeline_model_parallel_size != 1:
            raise ConfigError(f"--training-mode encoder_ctc needs --pipeline-model-parallel-size 1 (got "
                              f"{model.pipeline_model_parallel_size}): the encoder lives on the first stage "
                              "and the LLM's stages would idle")
        if model.mtp_depths:
            raise ConfigError('--training-mode encoder_ctc runs no LLM, so its MTP heads would not train: '
                              'drop --mtp-num-layers (the --finetune run that follows attaches new ones)')

    def _validate_inputs(self) -> None:
        """The files a run reads first: manifests and the tokenizer."""
        for name in ('train_manifest', 'valid_manifest'):
            for path in (getattr(self.train, name) or '').split(','):
                if path and not os.path.isfile(path):
                    raise ConfigError(f"--{name.replace('_', '-')} {path}: no such file")
                if path and self.model.ctc_target_units == 'phonemes':
                    _check_phonemes_field(f"--{name.replace('_', '-')}", path)
        data = self.data
        if data.tokenizer_type != 'byte' and not data.tokenizer_model:
            raise ConfigError(f'--tokenizer-type {data.tokenizer_type} needs --tokenizer-model (a file or folder)')
        if data.tokenizer_model and not os.path.exists(data.tokenizer_model):
            raise ConfigError(f'--tokenizer-model {data.tokenizer_model}: no such file or folder')

    def resolved(self) -> dict[str, Any]:
        """Every setting by name, as written beside checkpoints and logs."""
        merged = {}
        for section in dataclasses.fields(self):
            merged.update(dataclasses.asdict(getattr(self, section.name)))
        return dict(sorted(merged.items()))
