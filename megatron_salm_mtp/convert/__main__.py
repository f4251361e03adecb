"""Convert between Hugging Face checkpoints and the plugin's distributed checkpoints.

Import a Qwen3 LLM and a Whisper encoder for TP=2, attaching two new MTP depths:
    python -m megatron_salm_mtp.convert import-hf --llm Qwen3-1.7B --whisper whisper-small \\
        --out ckpt/salm-init --tensor-model-parallel-size 2 --mtp-num-layers 2
(with TP x PP > 1 and no torchrun around it, the command relaunches itself under torchrun with
TP x PP local processes; on a cluster, launch it with torchrun yourself.) Then:
    torchrun --nproc-per-node 2 -m megatron_salm_mtp.train --load ckpt/salm-init \\
        --config ckpt/salm-init/salm_model.yaml --tensor-model-parallel-size 2 ...
    python -m megatron_salm_mtp.generate --load ckpt/salm-init --prompt "Hello" --max-new-tokens 20
(the LLM's tokenizer.json is copied into --out and recorded with the checkpoint: training given no
tokenizer tokenizes with it, and generate, evaluate and transcribe decode with it.)

Export the trained LLM (+ MTP heads under DeepSeek-V3 names), encoder and projector:
    python -m megatron_salm_mtp.convert export-hf --load ckpt/run --out hf/salm-mtp
"""

import argparse
import os
import subprocess
import sys

from ..commands import add_load_argument


def import_parser(sub):
    p = sub.add_parser('import-hf', help='Hugging Face LLM (+ Whisper encoder) -> plugin checkpoint')
    p.add_argument('--llm', required=True, help='Hugging Face Llama/Qwen2/Qwen3 folder (config.json + safetensors)')
    p.add_argument('--whisper', help='Hugging Face Whisper folder (its encoder is used)')
    p.add_argument('--out', required=True, help='checkpoint folder to write (train/generate --load)')
    p.add_argument('--tensor-model-parallel-size', type=int, default=1)
    p.add_argument('--pipeline-model-parallel-size', type=int, default=1)
    p.add_argument('--mtp-num-layers', type=int,
                   help='MTP depths (default: as many as the checkpoint ships, else none)')
    p.add_argument('--mtp-init', choices=('last_layer', 'random'), default='last_layer',
                   help='new MTP depths: copy of the last decoder layer with eh_proj=[0|I] (default) or random')
    p.add_argument('--mtp-replace-existing-head', action='store_true',
                   help='ignore MTP weights shipped in the checkpoint and build new heads')
    p.add_argument('--mtp-extend-depth', action='store_true',
                   help='allow --mtp-num-layers above the shipped depth (new depths copy the last shipped one)')
    p.add_argument('--mtp-use-repeated-layer', action='store_true', help='one MTP layer shared by all depths')
    p.add_argument('--seq-length', type=int, help='default: max_position_embeddings, at most 4096')
    p.add_argument('--audio-frame-stack', type=int)
    p.add_argument('--bf16', action='store_true', help='store bfloat16 weights')
    p.add_argument('--seed', type=int, default=1234, help='seed of the randomly initialised parts')
    p.add_argument('--overwrite', action='store_true',
                   help='write into an --out folder that already holds checkpoints (they are deleted first)')
    return p


def export_parser(sub):
    p = sub.add_parser('export-hf', help='plugin checkpoint -> Hugging Face folders')
    add_load_argument(p)
    p.add_argument('--out', required=True)
    p.add_argument('--llm-config', help='the original Hugging Face LLM folder or config.json, '
                   'whose config.json is kept (architecture, token ids); default: built from scratch')
    return p


def _relaunch(world: int) -> None:
    """Run this same command under torchrun with ``world`` local processes."""
    # --standalone: the rendezvous store binds a port the OS picks and keeps it (no free-port race)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={world}',
           '-m', 'megatron_salm_mtp.convert'] + sys.argv[1:]
    sys.exit(subprocess.call(cmd))


def cmd_import(args) -> None:
    from ..checkpoint.run_folders import check_save_folder
    from .load import salm_config_from_hf
    if not args.overwrite:  # before any process starts: a training checkpoint's tracker would go to 0
        check_save_folder(args.out, None, False, '--out', '--overwrite')
    world = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    if world > 1 and 'WORLD_SIZE' not in os.environ:
        _relaunch(world)
    cfg = salm_config_from_hf(
        args.llm, args.whisper, tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        mtp_num_layers=args.mtp_num_layers, seq_length=args.seq_length,
        audio_frame_stack=args.audio_frame_stack, bf16=args.bf16 or None,
        mtp_use_repeated_layer=args.mtp_use_repeated_layer or None)
    from .importer import run_import
    run_import(cfg, args.llm, args.whisper, args.out, args.mtp_init, args.mtp_replace_existing_head,
               args.mtp_extend_depth, args.seed, args.overwrite)


def cmd_export(args) -> None:
    from .export import run_export
    run_export(args.load, args.out, args.llm_config)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    import_parser(sub)
    export_parser(sub)
    args = parser.parse_args(argv)
    from ..config import ConfigError
    try:
        {'import-hf': cmd_import, 'export-hf': cmd_export}[args.command](args)
    except ConfigError as err:
        parser.exit(2, f'error: {err}\n')


if __name__ == '__main__':
    main()
