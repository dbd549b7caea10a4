#!/usr/bin/env bash
# The main job on built-in synthetic data, from a fresh clone:
#   setup -> synthetic events -> hytrec-prep -> dataset/batch statistics
#   -> torchx run (2 local ranks, sharded tables, gloo) training with validation.
# Everything is written under runs/demo/ (ignored by git). Re-running starts a fresh demo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${HYTREC_VENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
cd "$here"
out=runs/demo
events="${HYTREC_DEMO_EVENTS:-300000}"
rm -rf "$out"
mkdir -p "$out"

echo "== 1/4 synthetic events ($events) -> $out/raw"
python -m data_prep.synthetic --events "$events" --out "$out/raw" --seed 0

echo "== 2/4 prepare -> $out/prepared"
hytrec-prep "$out/raw/events" "$out/prepared" --config configs/prep/synthetic.yaml

echo "== 3/4 dataset and batch statistics (one epoch through the loader)"
python -m hytrec_torchrec.data.inspect "$out/prepared" max_len=2000 batch_size=32 2>/dev/null

echo "== 4/4 train: torchx run -s local_cwd launch/components.py:train -j 1x2"
torchx run -s local_cwd launch/components.py:train --config configs/demo.yaml -j 1x2 \
    2> >(grep -vE "is_fx_tracing|TopologyFactory|HeuristicalStorage|dense_tensor_estimate|warn|Warning" >&2)
echo
echo "done: sharding plan, checkpoints, TensorBoard logs and summary.json in $out/train"
cat "$out/train/summary.json"
