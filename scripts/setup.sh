#!/usr/bin/env bash
# Create .venv and install the pinned CPU stack (docs/design.md §2) without ever downloading the CUDA
# fbgemm-gpu. Idempotent: a second run checks a stamp and returns in about a second.
#
#   bash scripts/setup.sh            # CPU stack (the newest pair, torchrec 1.9) into ./.venv
#   HYTREC_VENV=/path bash scripts/setup.sh
#   HYTREC_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
#       (where torch==2.13.0 is not on your default index as a CPU wheel)
#   HYTREC_FLAVOR=cuda bash scripts/setup.sh
#       (GPU machines and the CUDA image: torch from PyTorch's CUDA index and fbgemm-gpu 1.8.0, the
#        CUDA build, instead of fbgemm-gpu-cpu; torchrec still --no-deps)
#   HYTREC_STACK=1.8 HYTREC_VENV=.venv-1.8 bash scripts/setup.sh
#       (the other stack, docs/install.md "Two stacks": torchrec 1.8.0, fbgemm-gpu 1.8.0, torch 2.13.0
#        from requirements-cpu.txt; HYTREC_STACK=1.9, the default, is torchrec 1.9.2, fbgemm-gpu 1.9.0,
#        torch 2.14.1 from requirements-cpu-1.9.txt. Give each stack its own venv; unset,
#        HYTREC_STACK is the stack the venv was set up with, and 1.9 for a new one)
#   HYTREC_STACK_ONLY=1 bash scripts/setup.sh
#       (the image's first stage: the stack alone, without the test tools of requirements-cpu.txt
#        (lines ending in "# test-only"), the package or the stamp, so it needs no code)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HYTREC_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
# Unset, HYTREC_STACK is the venv's own stack: recorded in it by setup (.hytrec-stack), or for a venv
# set up before 1.9 became the default (which recorded nothing for 1.8) read off its installed
# torchrec; 1.9 for a new venv. So test.sh, demo.sh, ... keep an existing venv on its stack.
venv_stack() {
    if [ -f "$venv/.hytrec-stack" ]; then cat "$venv/.hytrec-stack"; return; fi
    local info
    for info in "$venv"/lib/python*/site-packages/torchrec-1.8*.dist-info; do
        [ -e "$info" ] && { echo 1.8; return; }
    done
    echo 1.9
}
stack="${HYTREC_STACK:-$(venv_stack)}"
case "$stack" in  # the requirements file, torchrec (installed --no-deps below) and the CUDA torch index
    1.8) req="$here/requirements-cpu.txt"; torchrec_pin=1.8.0
         cuda_index=https://download.pytorch.org/whl/cu128 ;;
    1.9) req="$here/requirements-cpu-1.9.txt"; torchrec_pin=1.9.2
         cuda_index=https://download.pytorch.org/whl/cu130 ;;  # fbgemm-gpu 1.9.0 links libcudart.so.13
    *) echo "[setup] HYTREC_STACK must be 1.8 or 1.9, not '$stack'" >&2; exit 2 ;;
esac
torch_pin="$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$req")"
fbgemm_pin="$(sed -n 's/^fbgemm-gpu-cpu==\([^ ]*\).*/\1/p' "$req")"
flavor="${HYTREC_FLAVOR:-cpu}"
case "$flavor" in
    cpu) ;;
    cuda)  # the same pins with the CUDA fbgemm-gpu; torch's CUDA wheels from PyTorch's index
        cuda_req="$(mktemp)"
        sed 's/^fbgemm-gpu-cpu==/fbgemm-gpu==/' "$req" > "$cuda_req"
        req="$cuda_req"
        HYTREC_TORCH_INDEX="${HYTREC_TORCH_INDEX:-$cuda_index}" ;;
    *) echo "[setup] HYTREC_FLAVOR must be cpu or cuda, not '$flavor'" >&2; exit 2 ;;
esac
stack_only="${HYTREC_STACK_ONLY:-0}"
if [ "$stack_only" = 1 ]; then
    runtime_req="$(mktemp)"
    grep -v '# test-only$' "$req" > "$runtime_req"
    req="$runtime_req"
fi
stamp="$venv/.hytrec-setup-stamp"
# The stamp covers the stack: its requirements file, and for a stack other than the default its name
# (left out for 1.8, so that venvs stamped before stacks existed stay up to date).
want="$( (cat "$req" "$here/pyproject.toml" 2>/dev/null || true; echo "$flavor"
          [ "$stack" = 1.8 ] || echo "stack $stack") | sha256sum | cut -d' ' -f1)"

if [ "$stack_only" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import torchrec, fbgemm_gpu, hytrec_torchrec" 2>/dev/null; then
    echo "[setup] $venv is up to date"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
extra=()
if [ -n "${HYTREC_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$HYTREC_TORCH_INDEX"); fi

echo "[setup] installing the pinned $flavor stack (torch $torch_pin, fbgemm-gpu $fbgemm_pin ($flavor build), torchx 0.7.0, ...)"
"${pip[@]}" install "${extra[@]}" -r "$req"
echo "[setup] installing torchrec $torchrec_pin with --no-deps (avoids the CUDA fbgemm-gpu)"
"${pip[@]}" install --no-deps "torchrec==$torchrec_pin"
if [ "$stack_only" != 1 ]; then
    echo "[setup] installing hytrec_torchrec (editable, --no-deps)"
    "${pip[@]}" install --no-deps --no-build-isolation -e "$here"
fi

# Fail loudly if something pulled the other fbgemm-gpu build over the wanted one.
HYTREC_FLAVOR="$flavor" "$venv/bin/python" - <<'PY'
import importlib.metadata as md
import os
names = {d.metadata["Name"].lower() for d in md.distributions()}
other = "fbgemm-gpu" if os.environ["HYTREC_FLAVOR"] == "cpu" else "fbgemm-gpu-cpu"
assert other not in names, f"{other} got installed beside the wanted build; remove it and rerun setup"
import torch, fbgemm_gpu, torchrec  # noqa: F401
torch.ops.fbgemm.asynchronous_complete_cumsum(torch.tensor([1, 2]))
print(f"[setup] ok: torch {torch.__version__}, torchrec {torchrec.__version__}")
PY
echo "$stack" > "$venv/.hytrec-stack"
[ "$stack_only" = 1 ] || echo "$want" > "$stamp"
