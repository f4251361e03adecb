"""What the commands that read a checkpoint share: their ``--load`` flag. Imports nothing heavy:
entry modules import it at their top (dist_checkpointing's helper process re-imports them)."""

import argparse

LOAD_HELP = 'checkpoint folder (its latest complete checkpoint)'


def add_load_argument(parser: argparse.ArgumentParser) -> None:
    """``--load``, as generate, evaluate, transcribe and ``convert export-hf`` take it."""
    parser.add_argument('--load', required=True, help=LOAD_HELP)
