"""Train the SALM with Megatron-LM's ``pretrain()`` (megatron-core 0.19.x wheels):

    torchrun --nproc-per-node 8 -m megatron_salm_mtp.megatron_lm.pretrain \\
        <Megatron-LM flags: --num-layers ... --swiglu --normalization RMSNorm --disable-bias-linear
         --hidden-dropout 0 --attention-dropout 0 --position-embedding-type rope --mtp-num-layers 2
         --micro-batch-size ... --train-iters ... --lr ... --bf16 --save ... --load ...>
        <SALM flags: --encoder-num-layers ... --encoder-hidden-size ... --num-mel-bins 80
         --tokenizer-type HuggingFaceTokenizer --tokenizer-model qwen3-dir
         --train-manifest train.jsonl --valid-manifest valid.jsonl>

``--help`` lists both. Megatron-LM owns initialisation, optimizer, schedules, logs and
checkpoints (its own format, resumed by this entry with ``--load``); the plugin's loop is
``python -m megatron_salm_mtp.train``. Megatron is imported inside ``main``: dist_checkpointing's
helper process re-imports this module.
"""

import sys

from . import MegatronTrainingUnavailable, require_megatron_training


def _skip_dataset_index_helper_build() -> None:
    """``initialize_megatron`` runs ``make`` in megatron/core/datasets to build the C++ index
    helpers of Megatron's token datasets, and exits when that fails, as it does on a pip-installed
    wheel (the helpers come prebuilt, without a Makefile). The SALM's speech data never uses them."""
    from megatron.core.datasets import utils as dataset_utils
    dataset_utils.compile_helpers = lambda: None


def main() -> None:
    try:
        require_megatron_training()
    except MegatronTrainingUnavailable as err:
        sys.exit(f'error: {err}')
    from megatron.core.transformer.enums import ModelType
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.training import pretrain

    from .args import parse_megatron_args
    from .providers import SALMProviders

    args = parse_megatron_args()
    providers = SALMProviders.from_args(args)
    _skip_dataset_index_helper_build()
    pretrain(pretrain_cfg_container_from_args(args), providers.datasets_provider,
             ModelType.encoder_or_decoder, providers.forward_step,
             model_provider=providers.model_provider)


if __name__ == '__main__':
    main()
