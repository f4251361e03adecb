"""Greedy text-only generation from a plugin checkpoint (an imported or a trained one).

    python -m megatron_salm_mtp.generate --load ckpt/salm-init --prompt "The capital of France is" \\
        --max-new-tokens 20 [--json]
    torchrun --nproc-per-node 2 -m megatron_salm_mtp.generate --load ... --tensor-model-parallel-size 2 ...

The checkpoint may have been saved at any TP/PP layout: it is resharded on load to TP = the number
of processes, PP = 1. Each new token recomputes the whole sequence (no KV cache: this is the
reference path; the speculative decoder lives elsewhere). Stops after ``--max-new-tokens`` or at an
end-of-sequence id (``--eos-id``, default: ``generation_config.json`` beside the checkpoint).
"""

import argparse
import json
import os

import torch

from .commands import add_load_argument


def default_eos_ids(load_dir: str) -> list[int]:
    path = os.path.join(load_dir, 'generation_config.json')
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        eos = json.load(f).get('eos_token_id')
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def make_tokenizer(tokenizer_path: str | None, checkpoint_settings: dict | None):
    """``--tokenizer`` when given, else the checkpoint's (``checkpoint_tokenizer``'s settings)."""
    from .data.tokenizer import build_tokenizer
    if tokenizer_path:
        return build_tokenizer('huggingface', tokenizer_path)
    return build_tokenizer(**checkpoint_settings)


@torch.no_grad()
def greedy(language_model, prompt: list[int], max_new_tokens: int, vocab_size: int,
           eos_ids=()) -> list[int]:
    """New token ids; ``language_model`` is the SALM's GPTModel (text only, full recompute)."""
    ids = list(prompt)
    new = []
    for _ in range(max_new_tokens):
        tokens = torch.tensor([ids])
        positions = torch.arange(len(ids))[None]
        logits = language_model(tokens, positions, attention_mask=None, runtime_gather_output=True)
        token = int(logits[0, -1, :vocab_size].float().argmax())
        ids.append(token)
        new.append(token)
        if token in eos_ids:
            break
    return new


def prompt_ids_or_error(text: str, parser: argparse.ArgumentParser) -> list[int]:
    """``--prompt-ids 1,2,3`` as ints; anything else is a usage error naming the flag."""
    try:
        return [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        parser.error(f'--prompt-ids {text!r}: expected comma-separated integers')


def check_prompt(ids: list[int], vocab_size: int, flag: str, parser: argparse.ArgumentParser) -> None:
    """A usage error naming ``flag`` unless ``ids`` is a non-empty run of the model's token ids."""
    if not ids:
        parser.error(f'{flag}: the prompt holds no token')
    outside = [t for t in ids if not 0 <= t < vocab_size]
    if outside:
        parser.error(f"{flag}: id(s) {outside[:5]} outside the checkpoint's vocabulary (0..{vocab_size - 1})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.generate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_argument(p)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument('--prompt', help="prompt text (tokenised with the checkpoint's tokenizer)")
    prompt.add_argument('--prompt-ids', help='prompt token ids, comma-separated')
    p.add_argument('--max-new-tokens', type=int, default=32)
    p.add_argument('--eos-id', type=int, action='append', help='stop at this id (repeatable)')
    p.add_argument('--tokenizer', help="tokenizer.json (or folder) overriding the checkpoint's")
    p.add_argument('--tensor-model-parallel-size', type=int, help='default: number of processes')
    p.add_argument('--json', action='store_true', help='print one JSON object with the token ids')
    return p


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    from .checkpoint.layout import verify_checkpoint_files
    from .checkpoint.metadata import checkpoint_tokenizer, latest_checkpoint, latest_run_settings, model_config
    from .checkpoint.save_load import load_checkpoint
    from .config import ConfigError
    from .parallel.setup import build_model, init_distributed, init_model_parallel, release_distributed

    if args.max_new_tokens < 1:
        parser.error(f'--max-new-tokens must be >= 1, got {args.max_new_tokens}')
    tokenizer_settings = None
    try:  # a missing or damaged checkpoint (or its tokenizer): one line before any process group
        _, stored = latest_run_settings(args.load)
        stored_cfg = model_config(stored)
        verify_checkpoint_files(latest_checkpoint(args.load)[1])
        if args.prompt is not None and not args.tokenizer:
            tokenizer_settings = checkpoint_tokenizer(args.load, stored)
    except (FileNotFoundError, ConfigError) as err:
        parser.error(str(err))
    if args.prompt_ids is not None:
        prompt = prompt_ids_or_error(args.prompt_ids, parser)
        check_prompt(prompt, stored_cfg.vocab_size, '--prompt-ids', parser)
    init_distributed()
    world = torch.distributed.get_world_size()
    tp = args.tensor_model_parallel_size or world
    cfg = stored_cfg.with_single_device_layout(tensor_model_parallel_size=tp)
    init_model_parallel(cfg, seed=1234)
    model = build_model(cfg, wrap_ddp=False)
    for chunk in model:
        chunk.eval()
    load_checkpoint(args.load, model, None, None, load_optimizer=False)
    tokenizer = None
    if args.prompt is not None:
        tokenizer = make_tokenizer(args.tokenizer, tokenizer_settings)
        prompt = tokenizer.encode(args.prompt)
        check_prompt(prompt, cfg.vocab_size, '--prompt', parser)
    eos = args.eos_id if args.eos_id is not None else default_eos_ids(args.load)
    new = greedy(model[0].language_model, prompt, args.max_new_tokens, cfg.vocab_size, eos)
    if torch.distributed.get_rank() == 0:
        text = tokenizer.decode(new) if tokenizer is not None else None
        if args.json:
            print(json.dumps({'prompt_ids': prompt, 'output_ids': new, 'text': text}), flush=True)
        else:
            print(text if text is not None else ' '.join(map(str, new)), flush=True)
    release_distributed()


if __name__ == '__main__':
    main()
