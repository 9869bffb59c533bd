# workpool consumer image for Azure Batch container pools (WORKPOOL_NODE_IMAGE), docs/azure.md.
#
#   az acr build -r <registry> -t workpool:0.1.0 .      # builds in Azure: no local docker needed
#   docker build -t <registry>.azurecr.io/workpool:0.1.0 .
#
# GPU base: plain Ubuntu 24.04. TensorFlow brings its own CUDA and cuDNN user-space libraries
# through the `gpu` extra (tensorflow[and-cuda]), so the image needs no CUDA base (and no CUDA
# base's minimum-driver check); the NVIDIA container runtime mounts the node's driver when Batch
# runs each consumer task with `--gpus all`, for the capabilities named here.
FROM ubuntu:24.04

ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The same path as a start-task pool's tasks use, so the launcher's command line is one shape.
RUN python3.12 -m venv /opt/workpool/venv
ENV PATH=/opt/workpool/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY workpool ./workpool
COPY producer ./producer
COPY consumer ./consumer
COPY orchestration ./orchestration
RUN pip install ".[gpu]" && rm -rf /src

# Tasks run as Batch's non-admin user; they write only to their working directory.
WORKDIR /tmp
# Fails the build on a broken install; the GPU check itself runs on the node (consumer refuses
# to score on the CPU when GPUs are listed but TensorFlow sees none).
RUN consumer --help > /dev/null && python -c "import tensorflow, workpool"
CMD ["consumer", "run", "--workers", "auto"]
