"""Schedule, optimiser, logging and checkpoint settings of a training run (Megatron-LM names)."""

import importlib.util
import os
from dataclasses import dataclass

from ..config_checks import ConfigError, at_least, below_one, check_types, one_of
from .choices import CHOICES


@dataclass
class TrainConfig:
    """Schedule, optimiser, logging and checkpoint settings (Megatron-LM names)."""
    # --- Training: schedule and optimizer ---
    train_iters: int = 100
    """Optimizer steps to run."""
    micro_batch_size: int = 4
    """Samples per microbatch per DP rank."""
    global_batch_size: int = 16
    """Samples per optimizer step over all DP ranks and microbatches."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay."""
    lr_decay_style: str = 'cosine'
    """constant, linear, cosine or inverse-square-root."""
    lr_warmup_iters: int = 0
    """Linear warm-up steps."""
    lr_decay_iters: int | None = None
    """Steps of decay (None: train_iters)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    clip_grad: float = 1.0
    """Gradient-norm clipping (0: off)."""
    seed: int = 1234
    """Seed of weights, data order and dropout."""
    check_for_nan_in_loss_and_grad: bool = True
    """Skip the update (on every rank; counted, no checkpoint) when the loss or the reduced
    gradient norm is NaN or inf anywhere; off: core's optimizer applies whatever it gets."""
    max_consecutive_nan_skips: int = 5
    """Stop after this many consecutive skipped steps (non-finite loss or gradient)."""
    training_mode: str = 'joint'
    """joint (all train), head_only (only the MTP heads), freeze_llm (encoder, projector, MTP) or
    encoder_ctc (only the audio encoder and its CTC head, on the CTC loss alone; the LLM does not
    run: stage 1 of a two-stage recipe, continued by --finetune)."""
    # --- Logging and validation ---
    eval_interval: int = 50
    """Evaluate on the validation manifest every this many steps (0: never)."""
    eval_iters: int = 4
    """Global batches per evaluation."""
    log_interval: int = 10
    """Log every this many steps."""
    log_dir: str | None = None
    """Where metrics.jsonl goes; default: --save, else ./runs/latest."""
    tensorboard_dir: str | None = None
    """Write TensorBoard event files here (the ``plots`` extra's tensorboard); none without it."""
    wandb_project: str | None = None
    """Log the metrics to this Weights & Biases project too (needs the wandb package)."""
    wandb_exp_name: str | None = None
    """The Weights & Biases run's name (with --wandb-project)."""
    logging_level: int | None = None
    """Python logging level of the run's log lines (10 debug, 20 info, 30 warning; default 20)."""
    # --- Checkpoints and stopping ---
    save: str | None = None
    """Checkpoint folder to write."""
    load: str | None = None
    """Checkpoint folder to resume from (the latest complete checkpoint in it)."""
    overwrite_save: bool = False
    """Start over in a --save folder that holds checkpoints this run does not resume from (no
    --load of it): they are deleted at start. Without it such a folder is refused, since the
    run's saves would rewind its tracker."""
    no_load_optim: bool = False
    """With --load: restore weights, iteration and data position but start a fresh optimizer and
    LR schedule (e.g. across a change between EP=1 and EP>1)."""
    no_save_optim: bool = False
    """Save the model, the RNG states and the run's position but no optimizer or LR-schedule state
    (Megatron-LM's flag): a checkpoint of the weights alone (bf16 weights in a bf16 run, about a seventh
    of a full one), for evaluation, --finetune or handing the model to another machine. Resuming
    from it takes --no-load-optim."""
    finetune: bool = False
    """With --load: load the model weights only and start a new run (Megatron-LM's flag): iteration
    0, a fresh optimizer and LR schedule, the data from the start, RNG from --seed; e.g. a joint run
    from an --training-mode encoder_ctc checkpoint. --save must name another folder."""
    save_interval: int | None = None
    """Save every this many steps (and at the end when --save is set); 0 or None: at the end only."""
    dist_ckpt_optim_fully_reshardable: bool = False
    """With --use-distributed-optimizer: save its state in the fully reshardable format (Megatron-LM's
    flag), which loads at any TP, PP and DP size but gathers and copies the whole optimizer state on
    the training thread at every save. The default (dp_reshardable) saves the optimizer's own shards
    as they are (a save holds training a fraction as long) and loads them at the same TP and PP
    only; the weights load at any layout either way (--no-load-optim, --finetune)."""
    async_save: bool = False
    """Write checkpoints in the background (a forked writer per rank) while training goes on; a
    checkpoint counts (marker, tracker) once every rank's writes are done. Each save still waits
    for the previous one, as does the end of the run and a signal's stop."""
    exit_interval: int | None = None
    """Save (with --save) and exit once the iteration is a multiple of this (resume with --load)."""
    exit_duration_in_mins: float | None = None
    """Save (with --save) and exit at the first step boundary after this many minutes of training
    (a job's time limit; resume with --load)."""
    # --- Data ---
    train_manifest: str | None = None
    """Training manifest(s), comma-separated (JSONL, NeMo style)."""
    valid_manifest: str | None = None
    """Validation manifest(s), comma-separated."""

    def validate(self, dp_size: int | None = None) -> None:
        check_types(self)
        at_least(self, 1, ('train_iters', 'micro_batch_size', 'global_batch_size', 'log_interval', 'eval_iters',
                           'max_consecutive_nan_skips', 'lr_decay_iters', 'exit_interval'))
        at_least(self, 0, ('lr', 'min_lr', 'lr_warmup_iters', 'weight_decay', 'clip_grad', 'eval_interval',
                           'save_interval', 'seed'))
        below_one(self, ('adam_beta1', 'adam_beta2'))
        if self.wandb_exp_name and not self.wandb_project:
            raise ConfigError('--wandb-exp-name names a run of --wandb-project: give the project too')
        if self.wandb_project and importlib.util.find_spec('wandb') is None:
            raise ConfigError(f'--wandb-project {self.wandb_project}: the wandb package is not installed '
                              '(pip install wandb)')
        if self.logging_level is not None and self.logging_level < 0:
            raise ConfigError(f'--logging-level must be >= 0, got {self.logging_level}')
        if self.async_save and not self.save:
            raise ConfigError('--async-save needs --save (the folder to write)')
        if self.save_interval and not self.save:
            raise ConfigError(f'--save-interval {self.save_interval} needs --save (the folder to write), '
                              'or --save-interval 0 for no periodic saves')
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f'--global-batch-size {self.global_batch_size} is not divisible by '
                              f'--micro-batch-size {self.micro_batch_size}')
        one_of(self, 'training_mode', CHOICES['training_mode'])
        one_of(self, 'lr_decay_style', CHOICES['lr_decay_style'])
        if dp_size is not None and self.global_batch_size % (self.micro_batch_size * dp_size):
            raise ConfigError(f'--global-batch-size {self.global_batch_size} is not divisible by '
                              f'--micro-batch-size {self.micro_batch_size} x data-parallel size {dp_size}')
        # Core's scheduler asserts warm-up < decay; a constant schedule decays over --train-iters.
        if self.lr_decay_style == 'constant' and self.lr_warmup_iters >= self.train_iters:
            raise ConfigError(f'--lr-warmup-iters {self.lr_warmup_iters} must be below --train-iters '
                              f'{self.train_iters}')
        decay = self.lr_decay_iters or self.train_iters
        if self.lr_decay_style != 'constant' and self.lr_warmup_iters >= decay:
            raise ConfigError(f'--lr-warmup-iters {self.lr_warmup_iters} must be below --lr-decay-iters '
                              f'(or --train-iters) {decay}')
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ConfigError(f'--exit-duration-in-mins {self.exit_duration_in_mins} must be positive')
        if not self.train_manifest:
            raise ConfigError('--train-manifest is required')
        self._validate_finetune()

    def _validate_finetune(self) -> None:
        if self.finetune and not self.load:
            raise ConfigError('--finetune needs --load (the checkpoint whose weights start the run)')
        if self.finetune and self.save and os.path.realpath(self.save) == os.path.realpath(self.load):
            raise ConfigError(f"--finetune starts a new run from --load {self.load}'s weights: --save needs "
                              "another folder (to resume a finetuning run, --load its own --save folder "
                              "without --finetune)")
