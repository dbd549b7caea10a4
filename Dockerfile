# The hytrec_torchrec image that the Kubernetes (and, with a container runtime, Slurm) components
# run. Three stages:
#   stack    the pinned stack in /opt/venv, installed by scripts/setup.sh (HYTREC_STACK_ONLY=1) in
#            the same order and for the same reason as on a workstation (torchrec --no-deps, so the
#            matching fbgemm-gpu build stays), without the test tools. It copies only
#            requirements-cpu.txt and scripts/setup.sh, so a code edit leaves its layer cached. The
#            image keeps the torchrec 1.8 stack (HYTREC_STACK=1.8; workstations and CI default to
#            1.9, docs/install.md "Two stacks").
#   build    the package as a wheel (the code enters here).
#   runtime  the base image, a non-root user, the stack's venv, the wheel installed --no-deps into
#            it, and configs/, examples/ and .torchxconfig in the working directory /opt/hytrec
#            (so `--config configs/demo.yaml` resolves; `--config demo` works anywhere).
#
#   docker build -t hytrec_torchrec:cpu .
#   docker build --build-arg FLAVOR=cuda -t hytrec_torchrec:cuda .    # torch + fbgemm-gpu for CUDA
#
# The CPU flavour takes torch from PyTorch's CPU wheel index (on Linux x86_64 the default index's
# torch is the CUDA build, which pulls gigabytes of nvidia packages); the CUDA flavour takes torch's
# CUDA runtime from its wheels (the host needs only the driver and the NVIDIA container runtime).
# TORCH_INDEX overrides the wheel index of either (default: .../whl/cpu, or setup.sh's cu128).
#
# Base image, pinned by digest. This digest of python:3.11-slim was taken from public Dockerfiles
# that pin it (found twice, independently); it could not be checked against a registry where this
# file was written. Before relying on it, and to move to a newer base, check and replace it with
#   docker buildx imagetools inspect python:3.11-slim     (the "Digest:" line)
# or build against your own mirror with --build-arg BASE_IMAGE=registry.example/python@sha256:...
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${BASE_IMAGE} AS stack
ARG FLAVOR=cpu
ARG TORCH_INDEX=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-cpu.txt ./
COPY scripts/setup.sh scripts/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN index="${TORCH_INDEX}"; \
    if [ -z "${index}" ] && [ "${FLAVOR}" = cpu ]; then index=https://download.pytorch.org/whl/cpu; fi; \
    HYTREC_STACK=1.8 HYTREC_STACK_ONLY=1 HYTREC_VENV=/opt/venv HYTREC_FLAVOR="${FLAVOR}" \
        HYTREC_TORCH_INDEX="${index}" bash scripts/setup.sh

FROM stack AS build
COPY pyproject.toml README.md ./
COPY hytrec_torchrec hytrec_torchrec/
COPY data_prep data_prep/
COPY launch launch/
COPY configs configs/
RUN /opt/venv/bin/python -m pip wheel --no-cache-dir --no-deps -w /wheels .

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 hytrec \
    && useradd --uid 10001 --gid hytrec --create-home --shell /usr/sbin/nologin hytrec
COPY --from=stack /opt/venv /opt/venv
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
WORKDIR /opt/hytrec
COPY configs configs/
COPY examples examples/
COPY .torchxconfig ./
RUN chown hytrec:hytrec /opt/hytrec
USER 10001:10001

# torchx's ddp component starts `hytrec-torchrun`, which is on PATH from the venv
CMD ["hytrec-train", "--help"]
