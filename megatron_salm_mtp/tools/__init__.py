"""Commands beside the runtime: nothing in training, inference or conversion imports them.

- ``corpus``      the synthetic espeak-ng speech corpus
                  (``python -m megatron_salm_mtp.tools.corpus.synth``, ``salm-mtp-synth``)
- ``bench_train`` the real training step's time, throughput and memory
                  (``python -m megatron_salm_mtp.tools.bench_train``, ``salm-mtp-bench``); its batches:
                  ``bench_rows`` (synthetic rows, or a length mix padded and packed)
- ``bench_data``  data-loading throughput per worker
                  (``python -m megatron_salm_mtp.tools.bench_data``, ``salm-mtp-bench-data``)
"""
