"""Tiny random Hugging Face models saved to disk once per test session (no network).

Three LLM families cover what the import must get right: Qwen3 (tied embeddings, QK-norm, head
dim != hidden / heads, GQA), Qwen2 (q/k/v biases, untied, RoPE theta 1e6) and Llama (untied, GQA,
RoPE theta 5e5); plus a Whisper encoder whose ids sit inside its small vocabulary.
"""

import json
import os

import pytest
import torch

VOCAB = 272  # the byte tokenizer's vocabulary: the training entry point can load these models
MAX_POS = 64
NUM_MELS = 16
WHISPER_POSITIONS = 16  # Whisper expects exactly 2 x this many mel frames


def _llm_configs():
    import transformers as T
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                  initializer_range=0.3)  # wide enough that greedy decoding does not repeat one id
    return {
        'qwen3': T.Qwen3Config(**common, head_dim=16, tie_word_embeddings=True, rope_theta=10000.0),
        'qwen2': T.Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1e6),
        'llama': T.LlamaConfig(**common, tie_word_embeddings=False, rope_theta=5e5),
    }


def _perturb_norms(model, gen):
    """Random models have unit norms and zero biases: make them non-trivial so a mapping mistake
    cannot hide."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name or name.endswith('bias'):
                param.add_(0.2 * torch.randn(param.shape, generator=gen))


def build_tiny_models(root: str) -> dict:
    """{'qwen3'|'qwen2'|'llama'|'whisper': folder}; built once under ``root``."""
    import transformers as T
    paths = {name: os.path.join(root, name) for name in ('qwen3', 'qwen2', 'llama', 'whisper')}
    if all(os.path.isfile(os.path.join(p, 'config.json')) for p in paths.values()):
        return paths
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classes = {'qwen3': T.Qwen3ForCausalLM, 'qwen2': T.Qwen2ForCausalLM, 'llama': T.LlamaForCausalLM}
    for name, config in _llm_configs().items():
        model = classes[name](config).eval()
        _perturb_norms(model, gen)
        model.save_pretrained(paths[name])
    whisper = T.WhisperConfig(
        vocab_size=64, num_mel_bins=NUM_MELS, encoder_layers=2, decoder_layers=1, d_model=32,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=WHISPER_POSITIONS, max_target_positions=16, pad_token_id=1,
        bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    model = T.WhisperModel(whisper).eval()
    _perturb_norms(model, gen)
    model.save_pretrained(paths['whisper'])
    return paths


@pytest.fixture(scope='session')
def hf_models(tmp_path_factory):
    return build_tiny_models(str(tmp_path_factory.getbasetemp() / 'hf_tiny'))


def hf_logits(folder: str, tokens: torch.Tensor) -> torch.Tensor:
    import transformers as T
    model = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


def hf_encoder(folder: str, features: torch.Tensor) -> torch.Tensor:
    import transformers as T
    model = T.WhisperModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model.encoder(input_features=features).last_hidden_state


def write_tiny_tokenizer(folder: str) -> str:
    """A word-level ``tokenizer.json`` (``w0`` .. ``w199``, ``[UNK]``, ``<|endoftext|>`` as EOS) and
    its ``tokenizer_config.json`` in ``folder``: 202 ids plus the plugin's virtual specials fit the
    tiny models' 272 rows, and its ids differ from the byte tokenizer's. Returns the json's path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {'[UNK]': 0, '<|endoftext|>': 1, **{f'w{i}': i + 2 for i in range(200)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(['<|endoftext|>'])
    path = os.path.join(folder, 'tokenizer.json')
    tokenizer.save(path)
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump({'eos_token': '<|endoftext|>', 'pad_token': '<|endoftext|>'}, f)
    return path
