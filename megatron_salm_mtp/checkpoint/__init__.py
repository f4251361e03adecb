"""Checkpoints: where they live and what they hold (``layout``, ``metadata``), save and load on
``megatron.core.dist_checkpointing`` (``save_load``, ``save_strategies``), the checks between a
checkpoint and the run loading it (``attach``, ``audio_parts``) and the run's folders
(``run_folders``). Training, convert, inference and generate all read checkpoints through here."""
