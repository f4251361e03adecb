from setuptools import find_packages, setup

setup(
    name='megatron_salm_mtp',
    version='0.1.0',
    description='Speech-augmented LLMs with Multi-Token Prediction heads on Megatron-Core',
    packages=find_packages(include=['megatron_salm_mtp', 'megatron_salm_mtp.*']),
    # What CI tests: Python 3.11 + torch 2.13 + megatron-core 0.16.1, and Python 3.12 + torch 2.14.1 +
    # megatron-core 0.19.2. In the NGC container (Dockerfile) the plugin goes in with --no-deps, so
    # the container's own torch build is kept.
    python_requires='>=3.11,<3.13',
    install_requires=['torch>=2.13', 'megatron-core>=0.16.1,<0.20', 'pyyaml', 'numpy', 'packaging', 'psutil',
                      'safetensors'],  # safetensors: convert's import-hf / export-hf; psutil: megatron.training
    extras_require={
        # ruff: the style check tests/run.sh runs first (pinned: a new release may add findings);
        # pytest-xdist: tests/run.sh runs the suite on every core
        'test': ['pytest', 'pytest-xdist', 'transformers', 'tokenizers', 'sentencepiece', 'soundfile', 'jiwer',
                 'espeakng-loader', 'whisper-normalizer==0.1.15', 'rapidfuzz==3.14.6', 'ruff==0.17.5'],
        # evaluate: Whisper's English normaliser (pinned: it defines the reported WER) and alignment
        'eval': ['whisper-normalizer==0.1.15', 'rapidfuzz==3.14.6'],
        # audio: every format libsndfile reads (WAV, FLAC, OGG, MP3, ...); without it, WAV only
        'audio': ['soundfile'],
        'tokenizers': ['tokenizers', 'sentencepiece'],
        'synth': ['espeakng-loader'],
        # Transformer Engine's kernels on GPU (the NGC container has it); apex is never used
        'te': ['transformer-engine[pytorch]'],
        # the quickstart's loss curve, evaluate's acceptance plot, --tensorboard-dir
        'plots': ['matplotlib', 'tensorboard'],
        'wandb': ['wandb'],  # --wandb-project
        # --cross-entropy-fusion-impl linear's kernels on CUDA (CUDA builds of torch bring it)
        'triton': ['triton'],
    },
    # One console script per command; each is also `python -m <module>` (tests/unit/package/test_console_scripts.py).
    entry_points={'console_scripts': [
        'salm-mtp-train=megatron_salm_mtp.train:main',
        'salm-mtp-evaluate=megatron_salm_mtp.evaluate:main',
        'salm-mtp-transcribe=megatron_salm_mtp.transcribe:main',
        'salm-mtp-generate=megatron_salm_mtp.generate:main',
        'salm-mtp-convert=megatron_salm_mtp.convert.__main__:main',
        'salm-mtp-summarize=megatron_salm_mtp.summarize:main',
        'salm-mtp-megatron-lm=megatron_salm_mtp.megatron_lm.pretrain:main',
        'salm-mtp-train-tokenizer=megatron_salm_mtp.data.train_tokenizer:main',
        'salm-mtp-synth=megatron_salm_mtp.tools.corpus.synth:main',
        'salm-mtp-text-source=megatron_salm_mtp.tools.corpus.text_source:main',
        'salm-mtp-text-manifest=megatron_salm_mtp.tools.corpus.text_manifest:main',
        'salm-mtp-bench=megatron_salm_mtp.tools.bench_train:main',
        'salm-mtp-bench-data=megatron_salm_mtp.tools.bench_data:main',
        'salm-mtp-compare-evals=megatron_salm_mtp.tools.compare_evals:main',
        'salm-mtp-word-frequency-errors=megatron_salm_mtp.tools.word_frequency_errors:main',
    ]},
)
