# The hytrec_torchrec image that the Kubernetes (and, with a container runtime, Slurm) components
# run: the pinned stack installed by scripts/setup.sh, in the same order and for the same reason
# (torchrec --no-deps, so that the matching fbgemm-gpu build stays), with the repository's configs
# at /opt/hytrec/configs (the working directory, so `--config configs/demo.yaml` resolves).
#
#   docker build -t hytrec_torchrec:cpu .
#   docker build --build-arg FLAVOR=cuda -t hytrec_torchrec:cuda .    # torch + fbgemm-gpu for CUDA
#
# The CUDA flavour takes torch's CUDA runtime from its wheels (the host needs only the driver and the
# NVIDIA container runtime); TORCH_INDEX picks the wheel index (default: PyTorch's cu128 index).
FROM python:3.11-slim

ARG FLAVOR=cpu
ARG TORCH_INDEX=

ENV HYTREC_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/hytrec

# The stack first (cached while only the code changes), then the package.
COPY requirements-cpu.txt pyproject.toml README.md ./
COPY scripts/setup.sh scripts/
COPY hytrec_torchrec hytrec_torchrec/
COPY data_prep data_prep/
COPY launch launch/
COPY configs configs/
RUN HYTREC_FLAVOR="${FLAVOR}" HYTREC_TORCH_INDEX="${TORCH_INDEX}" bash scripts/setup.sh

COPY examples examples/
COPY .torchxconfig ./

# torchx's ddp component starts `torchrun`, which is on PATH from the venv
CMD ["hytrec-train", "--help"]
