from setuptools import find_packages, setup

setup(
    name='megatron_salm_mtp',
    version='0.1.0',
    description='Speech-augmented LLMs with Multi-Token Prediction heads on Megatron-Core',
    packages=find_packages(include=['megatron_salm_mtp', 'megatron_salm_mtp.*']),
    python_requires='>=3.10',
    # torch is left unpinned on purpose: the NGC container's build (or the one installed first) is kept.
    install_requires=['torch>=2.4', 'megatron-core>=0.16.1,<0.20', 'pyyaml', 'numpy', 'psutil'],
    extras_require={
        'test': ['pytest', 'transformers', 'tokenizers', 'sentencepiece', 'soundfile', 'jiwer',
                 'espeakng-loader', 'whisper-normalizer==0.1.15', 'rapidfuzz==3.14.6'],
        # evaluate: Whisper's English normaliser (pinned: it defines the reported WER) and alignment
        'eval': ['whisper-normalizer==0.1.15', 'rapidfuzz==3.14.6'],
        'audio': ['soundfile'],
        'tokenizers': ['tokenizers', 'sentencepiece'],
        'synth': ['espeakng-loader'],
        'te': ['transformer-engine[pytorch]'],
        # the quickstart's loss curve, evaluate's acceptance plot, --tensorboard-dir
        'plots': ['matplotlib', 'tensorboard'],
    },
    entry_points={'console_scripts': ['salm-mtp-train=megatron_salm_mtp.train:main']},
)
