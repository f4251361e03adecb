"""Builds the SALM from Hugging Face folders in one parallel layout (TP = world size, gloo) and
records its LLM logits and audio-encoder outputs for the parity tests.

    torchrun --nproc-per-node N tests/support/convert_harness.py --llm D1,D2 [--whisper W] \\
        --inputs I.pt --out O.pt
"""

import argparse
import os

import torch
from megatron.core import parallel_state

from megatron_salm_mtp.convert.load import import_plan, load_into, salm_config_from_hf
from megatron_salm_mtp.parallel.setup import build_model, init_distributed, init_model_parallel, set_seed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--llm', required=True)
    parser.add_argument('--whisper')
    parser.add_argument('--inputs', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--mtp-num-layers', type=int)
    args = parser.parse_args()
    init_distributed()
    world = torch.distributed.get_world_size()
    inputs = torch.load(args.inputs)
    results = {}
    for i, folder in enumerate(args.llm.split(',')):
        cfg = salm_config_from_hf(folder, args.whisper, tensor_model_parallel_size=world,
                                  mtp_num_layers=args.mtp_num_layers)
        if i == 0:
            init_model_parallel(cfg, seed=1234)
        else:
            set_seed(1234)
        module = build_model(cfg, wrap_ddp=False)[0].eval()
        load_into(module, import_plan(cfg, folder, args.whisper))
        tokens = inputs['tokens']
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        with torch.no_grad():
            logits = module.language_model(tokens, positions, attention_mask=None,
                                           runtime_gather_output=True)
            record = {'logits': logits[..., :cfg.vocab_size]}
            if args.whisper and i == 0:
                lengths = torch.full((inputs['features'].shape[0],), inputs['features'].shape[-1])
                record['encoder'] = module.audio_encoder(inputs['features'], lengths)
        results[os.path.basename(folder)] = record
    if torch.distributed.get_rank() == 0:
        torch.save(results, args.out)
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
