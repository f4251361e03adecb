"""Values that used to pass silently or crash after the model was built: each one fails in the
real flag + YAML parse and validation (no process group, no model) with one line naming the flag."""

import os
import subprocess

import pytest

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.train import parse_and_validate
from tests.support.process import ROOT, preimported_python

CONFIGS = os.path.join(ROOT, 'configs')

BAD_FLAGS = [
    (['--hidden-size', '130'], '--hidden-size 130 is not divisible by --num-attention-heads 4'),
    (['--encoder-hidden-size', '66'], '--encoder-hidden-size 66 is not divisible by --encoder-num-attention-heads 4'),
    (['--position-embedding-type', 'bogus'], "--position-embedding-type 'bogus': choose rope, learned_absolute"),
    (['--transformer-impl', 'fast'], "--transformer-impl 'fast': choose none, transformer_engine, local"),
    (['--clip-grad', '-1'], '--clip-grad must be >= 0, got -1.0'),
    (['--ctc-target-units', 'phones'], "--ctc-target-units 'phones': choose tokens, characters"),
    (['--mtp-num-layers', '2', '--mtp-loss-scaling-factor', '-1'], '--mtp-loss-scaling-factor must be >= 0'),
    (['--eval-iters', '0'], '--eval-iters must be >= 1, got 0'),
    (['--save-interval', '5'], '--save-interval 5 needs --save'),
    (['--save-interval', '-1'], '--save-interval must be >= 0, got -1'),
    (['--mtp-num-layers', '-1'], '--mtp-num-layers must be >= 0, got -1'),
    (['--micro-batch-size', '0'], '--micro-batch-size must be >= 1, got 0'),
    (['--global-batch-size', '0'], '--global-batch-size must be >= 1, got 0'),
    (['--global-batch-size', '6', '--micro-batch-size', '4'],
     '--global-batch-size 6 is not divisible by --micro-batch-size 4'),
    (['--log-interval', '0'], '--log-interval must be >= 1, got 0'),
    (['--train-iters', '0'], '--train-iters must be >= 1, got 0'),
    (['--seq-length', '0'], '--seq-length must be >= 1, got 0'),
    (['--num-layers', '0'], '--num-layers must be >= 1, got 0'),
    (['--tensor-model-parallel-size', '0'], '--tensor-model-parallel-size must be >= 1, got 0'),
    (['--lr', '-0.1'], '--lr must be >= 0, got -0.1'),
    (['--adam-beta2', '1'], '--adam-beta2 must be in [0, 1), got 1.0'),
    (['--norm-epsilon', '0'], '--norm-epsilon must be positive, got 0.0'),
    (['--hidden-dropout', '1'], '--hidden-dropout must be in [0, 1), got 1.0'),
    (['--encoder-attention-dropout', 'nan'], '--encoder-attention-dropout must be in [0, 1), got nan'),
    (['--max-consecutive-nan-skips', '0'], '--max-consecutive-nan-skips must be >= 1'),
    (['--training-mode', 'head_only'],
     '--training-mode head_only trains the MTP heads only: it needs --mtp-num-layers'),
    (['--training-mode', 'encoder_ctc'], '--training-mode encoder_ctc trains the audio encoder on its CTC loss: it '
                                         'needs --ctc-loss-weight > 0'),
    (['--training-mode', 'encoder_ctc', '--ctc-loss-weight', '1', '--pipeline-model-parallel-size', '2'],
     '--training-mode encoder_ctc needs --pipeline-model-parallel-size 1 (got 2)'),
    (['--training-mode', 'encoder_ctc', '--ctc-loss-weight', '1', '--mtp-num-layers', '2'],
     '--training-mode encoder_ctc runs no LLM, so its MTP heads would not train: drop --mtp-num-layers'),
    (['--training-mode', 'lora'], "--training-mode 'lora': choose joint, head_only, freeze_llm, encoder_ctc"),
    (['--finetune'], '--finetune needs --load'),
    (['--finetune', '--load', 'ck', '--save', 'ck'], "--finetune starts a new run from --load ck's weights: "
                                                     "--save needs another folder"),
    (['--max-duration', '61'],
     '--max-duration 61.0: the audio encoder takes at most 30 s (--encoder-max-source-positions 1500)'),
    (['--encoder-max-source-positions', '500'], '--max-duration 30.0: the audio encoder takes at most 10 s'),
    (['--num-mel-bins', '100'], "--num-mel-bins 100: the log-mel features are Whisper's, 80 or 128 bins"),
    (['--prompt-template', 'chatml'], "--prompt-template 'chatml': choose plain, llama3, qwen"),
    (['--tokenizer-type', 'huggingface'], '--tokenizer-type huggingface needs --tokenizer-model'),
    (['--tokenizer-type', 'huggingface', '--tokenizer-model', 'no/such/tokenizer.json'],
     '--tokenizer-model no/such/tokenizer.json: no such file or folder'),
    (['--train-manifest', 'no/such.jsonl'], '--train-manifest no/such.jsonl: no such file'),
    (['--lr-decay-style', 'constant', '--train-iters', '6', '--lr-warmup-iters', '50'],
     '--lr-warmup-iters 50 must be below --train-iters 6'),
    (['--lr-decay-style', 'cosine', '--train-iters', '60', '--lr-decay-iters', '40', '--lr-warmup-iters', '50'],
     '--lr-warmup-iters 50 must be below --lr-decay-iters (or --train-iters) 40'),
    (['--valid-manifest', 'no/such.jsonl'], '--valid-manifest no/such.jsonl: no such file'),
    # misspelt choices name the nearest one; unknown flags the nearest flag
    (['--lr-decay-style', 'cosin'], "--lr-decay-style 'cosin': choose constant, linear, cosine, "
                                    "inverse-square-root (did you mean cosine?)"),
    (['--training-mode', 'head-only'], 'choose joint, head_only, freeze_llm, encoder_ctc (did you mean head_only?)'),
    (['--moe-token-dispatcher-type', 'all2all'], "--moe-token-dispatcher-type 'all2all': choose allgather, alltoall"),
    (['--prompt-template', 'qwn'], "--prompt-template 'qwn': choose plain, llama3, qwen (did you mean qwen?)"),
    (['--lr-decy-style', 'cosine'], 'unrecognized arguments: --lr-decy-style cosine (did you mean --lr-decay-style?)'),
    (['--hiden-size', '3', '--mtp-num-layrs=2'], 'unrecognized arguments: --hiden-size 3 --mtp-num-layrs=2 '
     '(--hiden-size: did you mean --hidden-size?; --mtp-num-layrs: did you mean --mtp-num-layers?)'),
    (['--zzzz'], 'unrecognized arguments: --zzzz'),
    (['--micro-batch-size', 'x'], "argument --micro-batch-size: invalid int value: 'x'"),
]

BAD_YAML = [
    ('num_layers: 3.7\n', 'num_layers must be an integer, got 3.7'),
    ('num_layers: true\n', 'num_layers must be an integer, got True'),
    ('lr: true\n', 'lr must be a number, got True'),
    ('bf16: 1\n', 'bf16 must be true or false, got 1'),
    ('max_duration: null\n', '--max-duration None: the audio encoder takes at most 30 s'),
    ('lr_decy_style: cosine\n', "unknown key 'lr_decy_style' (did you mean lr_decay_style?)"),
    ('lr_decay_style: cosin\n', "--lr-decay-style 'cosin': choose constant, linear, cosine"),
    ('tokenizer_type: sentencepeice\n', "--tokenizer-type 'sentencepeice': choose byte, huggingface, "
                                         "sentencepiece, hf, spm (did you mean sentencepiece?)"),
]


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / 'train.jsonl'
    path.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    return str(path)


def _error(argv) -> str:
    with pytest.raises(ConfigError) as err:
        parse_and_validate(argv)
    message = str(err.value)
    assert '\n' not in message
    return message


def test_good_flags_pass(manifest):
    run = parse_and_validate(['--train-manifest', manifest, '--mtp-num-layers', '2', '--training-mode', 'head_only'])
    assert run.model.mtp_num_layers == 2


@pytest.mark.parametrize('flags,message', BAD_FLAGS, ids=[' '.join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_values_name_the_flag(manifest, flags, message):
    assert message in _error(['--train-manifest', manifest] + flags)


@pytest.mark.parametrize('text,message', BAD_YAML, ids=[t.strip() for t, _ in BAD_YAML])
def test_bad_yaml_values_name_the_key(manifest, tmp_path, text, message):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    assert message in _error(['--config', str(config), '--train-manifest', manifest])


def test_python_api_values_are_type_checked_too():
    from megatron_salm_mtp.config import SALMConfig
    with pytest.raises(ConfigError, match='--num-layers must be an integer, got 3.7'):
        SALMConfig(num_layers=3.7).validate()
    with pytest.raises(ConfigError, match='--bf16 must be true or false, got 1'):
        SALMConfig(bf16=1).validate()


@pytest.mark.parametrize('name', sorted(os.listdir(CONFIGS)))
def test_shipped_configs_validate(manifest, tmp_path, name):
    parse_and_validate(['--config', os.path.join(CONFIGS, name), '--train-manifest', manifest,
                        '--tokenizer-model', str(tmp_path), '--save', str(tmp_path / 'ckpt')])
    parse_and_validate(['--config', os.path.join(CONFIGS, name), '--train-manifest', manifest,
                        '--tokenizer-model', str(tmp_path), '--save-interval', '0'])  # no checkpoints


@pytest.mark.parametrize('flags,error', [
    (['--micro-batch-size', '0'], 'error: --micro-batch-size must be >= 1, got 0'),
    (['--lr-decy-style', 'cosine'], 'error: unrecognized arguments: --lr-decy-style cosine '
                                    '(did you mean --lr-decay-style?)')])
def test_the_entry_point_prints_one_line_and_exits_2(manifest, flags, error):
    """One line on stderr: no traceback, and no usage listing every flag of argparse's."""
    command = [*preimported_python(), '-m', 'megatron_salm_mtp.train', '--train-manifest', manifest] + flags
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [error] and done.stdout == ''
