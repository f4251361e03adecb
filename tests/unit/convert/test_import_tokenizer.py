"""An imported checkpoint decodes with the tokenizer of its Hugging Face LLM in ``evaluate``,
``transcribe`` and ``generate`` alike, and ``train --load`` given no tokenizer trains with it:
``import-hf`` records the copied ``tokenizer.json`` in its config.yaml relative to the checkpoint
folder (which may move), and a missing file is one error line naming the checkpoint and the file."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from tokenizers import Tokenizer

from megatron_salm_mtp import evaluate, generate, transcribe
from megatron_salm_mtp.checkpoint.layout import CONFIG_FILE
from megatron_salm_mtp.checkpoint.metadata import checkpoint_tokenizer, latest_checkpoint, latest_run_settings
from megatron_salm_mtp.data.audio import write_wav
from megatron_salm_mtp.data.tokenizer import ByteTokenizer, HFTokenizer
from megatron_salm_mtp.inference.loading import load_for_inference
from tests.support.data_fixtures import tone, write_manifest
from tests.support.hf_fixtures import write_tiny_tokenizer
from tests.support.process import child_env, preimported_python

SAMPLE = 'w3 w17 w150 w42 w7'


def _run(args) -> str:
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    result = subprocess.run(preimported_python() + args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


@pytest.fixture(scope='module')
def llm_with_tokenizer(hf_models, tmp_path_factory):
    """The tiny Qwen3 with a word-level tokenizer.json beside it; (folder, tokenizer.json)."""
    folder = str(tmp_path_factory.mktemp('llm') / 'qwen3')
    shutil.copytree(hf_models['qwen3'], folder)
    return folder, write_tiny_tokenizer(folder)


@pytest.fixture(scope='module')
def imported(llm_with_tokenizer, tmp_path_factory):
    """(checkpoint folder, import-hf's stdout); the LLM only: the default 80-bin encoder, which
    the decoding commands' features fit."""
    out = str(tmp_path_factory.mktemp('import') / 'salm')
    stdout = _run(['-m', 'megatron_salm_mtp.convert', 'import-hf', '--llm', llm_with_tokenizer[0], '--out', out])
    return out, stdout


def _copy(checkpoint: str, folder) -> str:
    """A copy of ``checkpoint`` under another name (the module's import stays intact)."""
    return shutil.copytree(checkpoint, str(folder / 'copied'))


def test_import_records_its_tokenizer_beside_the_checkpoint(imported):
    out, stdout = imported
    with open(os.path.join(latest_checkpoint(out)[1], CONFIG_FILE)) as f:
        stored = yaml.safe_load(f)
    assert (stored['tokenizer_type'], stored['tokenizer_model']) == ('huggingface', 'tokenizer.json')
    assert os.path.isfile(os.path.join(out, 'tokenizer.json'))
    assert f'train with --load {out} --config ' in stdout and 'takes its tokenizer from it' in stdout


def test_training_from_an_import_takes_its_tokenizer(imported, tmp_path):
    """No --tokenizer-*: the run tokenizes with the import's (byte ids would index its embedding
    table as if they were its words), says so, and records it with its own checkpoints."""
    wav = str(tmp_path / 'a.wav')
    write_wav(wav, tone(0.8, freq=350, seed=4), 16000)
    manifest = write_manifest(tmp_path / 'train.jsonl', [{'audio_filepath': wav, 'text': 'w1 w2 w3'}] * 4)
    run = str(tmp_path / 'run')
    stdout = _run(['-m', 'megatron_salm_mtp.train', '--config', os.path.join(imported[0], 'salm_model.yaml'),
                   '--load', imported[0], '--save', run, '--train-manifest', manifest, '--seq-length', '64',
                   '--train-iters', '1', '--micro-batch-size', '2', '--global-batch-size', '2',
                   '--lr-warmup-iters', '0', '--eval-interval', '0', '--num-workers', '0'])
    tokenizer_file = os.path.join(imported[0], 'tokenizer.json')
    assert f'tokenizer: huggingface {tokenizer_file}, the one --load {imported[0]} was imported with' in stdout
    stored = latest_run_settings(run)[1]
    assert (stored['tokenizer_type'], stored['tokenizer_model']) == ('huggingface', tokenizer_file)


def test_a_moved_import_loads_its_own_tokenizer(single_rank_parallel, imported, llm_with_tokenizer, tmp_path):
    moved = _copy(imported[0], tmp_path)
    tokenizer = load_for_inference(moved).tokenizer
    expected = Tokenizer.from_file(llm_with_tokenizer[1]).encode(SAMPLE, add_special_tokens=False).ids
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.encode(SAMPLE) == expected
    assert expected != ByteTokenizer().encode(SAMPLE)
    assert tokenizer.decode(expected) == SAMPLE


def test_an_import_without_recorded_settings_uses_the_copied_file(imported, tmp_path):
    """An import written before the settings were recorded: its tokenizer.json is found beside it."""
    copied = _copy(imported[0], tmp_path)
    config = os.path.join(latest_checkpoint(copied)[1], CONFIG_FILE)
    with open(config) as f:
        stored = {k: v for k, v in yaml.safe_load(f).items() if not k.startswith('tokenizer_')}
    with open(config, 'w') as f:
        yaml.safe_dump(stored, f)
    settings = checkpoint_tokenizer(copied, latest_run_settings(copied)[1])
    assert settings == {'tokenizer_type': 'huggingface', 'tokenizer_model': os.path.join(copied, 'tokenizer.json')}


def test_evaluate_and_transcribe_decode_with_the_imported_tokenizer(single_rank_parallel, imported, tmp_path, capsys):
    wav = str(tmp_path / 'a.wav')
    write_wav(wav, tone(0.8, freq=350, seed=4), 16000)
    manifest = write_manifest(tmp_path / 'test.jsonl', [{'audio_filepath': wav, 'text': 'w1 w2'}])
    evaluate.main(['--load', imported[0], '--manifest', manifest, '--max-new-tokens', '6', '--warmup-batches', '0',
                   '--out', str(tmp_path / 'report.json'), '--out-manifest', str(tmp_path / 'pred.jsonl')])
    with open(tmp_path / 'pred.jsonl') as f:
        evaluated = json.loads(f.readline())['pred_text']
    capsys.readouterr()
    transcribe.main(['--load', imported[0], '--max-new-tokens', '6', '--json', wav])
    transcribed = json.loads(capsys.readouterr().out.splitlines()[-1])['pred_text']
    assert transcribed == evaluated
    words = evaluated.split(' ')  # the word-level tokenizer's words, where bytes would be any characters
    assert words and all(w[0] == 'w' and w[1:].isdigit() for w in words), evaluated


def test_generate_encodes_the_prompt_with_the_imported_tokenizer(imported, llm_with_tokenizer):
    stdout = _run(['-m', 'megatron_salm_mtp.generate', '--load', imported[0], '--prompt', SAMPLE,
                   '--max-new-tokens', '2', '--json'])
    ours = json.loads([line for line in stdout.splitlines() if line.startswith('{')][-1])
    assert ours['prompt_ids'] == Tokenizer.from_file(llm_with_tokenizer[1]).encode(SAMPLE).ids


@pytest.mark.parametrize('command', ['evaluate', 'transcribe', 'generate'])
def test_a_missing_tokenizer_file_is_one_line(imported, tmp_path, capsys, command):
    copied = _copy(imported[0], tmp_path)
    os.remove(os.path.join(copied, 'tokenizer.json'))
    wav = str(tmp_path / 'a.wav')
    write_wav(wav, tone(0.5, seed=1), 16000)
    argv = {'evaluate': ['--manifest', write_manifest(tmp_path / 'm.jsonl', [{'audio_filepath': wav, 'text': 'x'}])],
            'transcribe': [wav], 'generate': ['--prompt', SAMPLE]}[command]
    with pytest.raises(SystemExit) as exit_info:
        {'evaluate': evaluate, 'transcribe': transcribe, 'generate': generate}[command].main(['--load', copied] + argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].endswith(f'error: --load {copied}: the tokenizer file of its model, '
                              f'{os.path.join(copied, "tokenizer.json")}, is missing'), lines
