# The image launch/train_salm_mtp.sbatch runs: the NGC PyTorch container (CUDA torch, Transformer
# Engine, NCCL, Python 3.12) with the plugin and its pinned dependencies baked in, so that a job
# installs nothing when it starts or is requeued (compute nodes are often offline).
#
#   docker build --build-arg REGISTRY=<the NGC registry's host> -t salm-mtp .
#   enroot import -o salm-mtp.sqsh dockerd://salm-mtp   # the file the sbatch script looks for
#
# megatron-core 0.19.2 is the release CI tests on Python 3.12 (README: "Supported versions").
ARG REGISTRY
FROM ${REGISTRY}/nvidia/pytorch:26.10-py3

# megatron-core without its dependencies: the container's torch, numpy and Transformer Engine
# (NGC builds) must stay. The rest are the extras tokenizers, audio, convert, eval and plots.
RUN pip install --no-cache-dir --no-deps megatron-core==0.19.2 && \
    pip install --no-cache-dir tokenizers sentencepiece soundfile safetensors \
        whisper-normalizer==0.1.15 rapidfuzz==3.14.6 matplotlib tensorboard

COPY . /opt/megatron_salm_mtp
RUN pip install --no-cache-dir --no-deps /opt/megatron_salm_mtp && \
    cd / && python -c "import megatron.core, transformer_engine, soundfile, megatron_salm_mtp.train"
WORKDIR /opt/megatron_salm_mtp
