"""End to end: a real Megatron-Core training step (SALM with one MTP depth, CPU, gloo) consumes the
batches of every input form the pipeline reads: WAV layouts with offsets, FLAC, conversations with two
audios, each prompt template, and the byte, Hugging Face and SentencePiece tokenizers.

Runs in a subprocess: the step needs a process group and the CPU adaptation, which must not leak
into the other tests.
"""

import json
import os
import subprocess
import sys

import pytest

from megatron_salm_mtp.data.audio import write_wav
from tests.support.data_fixtures import hf_tokenizer_json, make_corpus, tone, write_manifest
from tests.support.process import child_env, free_port

STEP = r"""
import json, math, sys
import torch
from megatron_salm_mtp.config import SALMConfig
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel
from megatron_salm_mtp.training.step import forward_backward

forms = json.loads(sys.argv[1])
init_distributed()
out = {}
for i, (form, packed) in enumerate((f, p) for f in forms for p in (False, True)):
    # packed (the training default): rows of several utterances, one per microbatch
    dcfg = DataConfig(seq_length=128, micro_batch_size=1 if packed else 2, global_batch_size=2 if packed else 4,
                      default_prompt=None, tokenizer_type=form["tokenizer_type"],
                      tokenizer_model=form.get("tokenizer_model"), prompt_template=form["template"],
                      max_duration=5.0, pack_sequences=packed)
    tok = dcfg.make_tokenizer()
    cfg = SALMConfig(vocab_size=tok.vocab_size, audio_token_id=tok.audio_token_id, seq_length=128,
                     mtp_num_layers=1, num_mel_bins=dcfg.n_mels, audio_frame_stack=dcfg.stack)
    if i == 0:
        init_model_parallel(cfg, seed=1)
    model = build_model(cfg)
    loader = build_dataloader(dcfg, form["manifest"], tokenizer=tok)
    it = iter(loader)
    microbatches = [next(it), next(it)]
    loss = forward_backward(model, microbatches, cfg).mean
    enc = [p.main_grad if getattr(p, "main_grad", None) is not None else p.grad
           for n, p in model[0].module.named_parameters() if "audio_encoder" in n]
    audio_grad = float(sum(g.abs().sum() for g in enc if g is not None))
    out[form["name"] + ("_packed" if packed else "")] = {"loss": loss, "audio_grad": audio_grad,
                         "n_audio": sum(int(m["audio_features"].shape[0]) for m in microbatches),
                         "skips": loader.skip_counts()}
print("RESULT " + json.dumps(out))
"""


def _forms(tmp_path):
    d = str(tmp_path)
    make_corpus(d, n=4, seconds=(1.0, 1.6))
    write_wav(os.path.join(d, 'st44.wav'), tone(2.0, 44100, channels=2, seed=5), 44100, bits=24)
    write_wav(os.path.join(d, 'f48.wav'), tone(1.5, 48000, seed=6), 48000, bits=32, float_format=True)
    wavs = write_manifest(tmp_path / 'wavs.jsonl', [
        {'audio_filepath': 'wav/000.wav', 'duration': 1.0, 'text': 'sixteen k'},
        {'audio_filepath': 'st44.wav', 'duration': 1.2, 'offset': 0.5, 'text': 'stereo slice', 'lang': 'en'},
        {'audio_filepath': 'f48.wav', 'duration': 1.5, 'text': 'float', 'prompt': 'Transcribe:'},
        {'audio_filepath': 'wav/003.wav', 'duration': 1.6, 'text': 'last', 'taskname': 'asr'}])
    conv = write_manifest(tmp_path / 'conv.jsonl', [{'id': f'c{i}', 'conversations': [
        {'from': 'User', 'type': 'audio', 'value': 'wav/000.wav', 'duration': 1.0},
        {'from': 'User', 'type': 'text', 'value': 'versus'},
        {'from': 'User', 'type': 'audio', 'value': f'wav/00{i + 1}.wav', 'duration': 1.2},
        {'from': 'Assistant', 'type': 'text', 'value': 'different'},
        {'from': 'User', 'type': 'text', 'value': 'sure'},
        {'from': 'Assistant', 'type': 'text', 'value': 'yes'}]} for i in range(3)] + [
        {'audio_filepath': 'st44.wav', 'duration': 2.0, 'text': 'mixed in one manifest'}])
    forms = [{'name': 'wav_plain_byte', 'manifest': wavs, 'tokenizer_type': 'byte', 'template': 'plain'},
             {'name': 'conversation_llama3_byte', 'manifest': conv, 'tokenizer_type': 'byte', 'template': 'llama3'}]
    try:
        import soundfile as sf

        for i in range(4):
            sf.write(os.path.join(d, f'a{i}.flac'), tone(1.0 + 0.2 * i, 22050, seed=i), 22050)
        flac = write_manifest(tmp_path / 'flac.jsonl', [{'audio_filepath': f'a{i}.flac', 'duration': 1.0 + 0.2 * i,
                                                         'text': f'flac {i}'} for i in range(4)])
        forms.append({'name': 'flac_qwen_byte', 'manifest': flac, 'tokenizer_type': 'byte', 'template': 'qwen'})
    except ImportError:
        pass
    try:
        path = hf_tokenizer_json(tmp_path, ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
                                 {'bos_token': None, 'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>'})
        forms.append({'name': 'wav_qwen_hf', 'manifest': wavs, 'tokenizer_type': 'huggingface',
                      'tokenizer_model': str(path), 'template': 'qwen'})
    except pytest.skip.Exception:
        pass
    try:
        import sentencepiece as spm

        (tmp_path / 'c.txt').write_text('\n'.join(['sixteen k stereo slice float last different yes'] * 50))
        spm.SentencePieceTrainer.train(input=str(tmp_path / 'c.txt'), model_prefix=str(tmp_path / 'sp'),
                                       vocab_size=24, minloglevel=2)
        forms.append({'name': 'wav_plain_spm', 'manifest': wavs, 'tokenizer_type': 'sentencepiece',
                      'tokenizer_model': str(tmp_path / 'sp.model'), 'template': 'plain'})
    except ImportError:
        pass
    return forms


def test_a_training_step_consumes_every_input_form(tmp_path):
    pytest.importorskip('megatron.core')
    try:
        import megatron_salm_mtp.training.step  # noqa: F401
    except ImportError as e:
        pytest.skip(f'training step not importable: {e}')
    forms = _forms(tmp_path)
    env = child_env(MASTER_PORT=str(free_port()), MASTER_ADDR='127.0.0.1', RANK='0', WORLD_SIZE='1',
                    OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', STEP, json.dumps(forms)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split('RESULT ', 1)[1])
    assert set(result) == {f['name'] + p for f in forms for p in ('', '_packed')} and len(result) >= 4
    for name, r in result.items():
        assert r['loss'] == r['loss'] and 0 < r['loss'] < 20, (name, r)
        assert r['audio_grad'] > 0, name  # the audio reached the loss through the splice
        assert r['skips'] == {}, name
    assert result['conversation_llama3_byte']['n_audio'] >= 5  # two audios per conversation
    for name in {f['name'] for f in forms}:
        assert result[name + '_packed']['n_audio'] > 2, name  # two rows, more than two audios
