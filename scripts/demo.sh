#!/usr/bin/env bash
# The main job on built-in synthetic data, from a fresh clone:
#   setup -> synthetic events -> hytrec-prep -> dataset/batch statistics
#   -> torchx run (2 local ranks, sharded tables, gloo) training with validation
#   -> torchx run evaluation (2 ranks, full catalog, per segment) -> TorchScript export
#   -> a torch-only serving process answering requests from the exported file.
# Everything is written under runs/demo/ (ignored by git). Re-running starts a fresh demo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
out="${HYTREC_DEMO_DIR:-runs/demo}"
# Start fresh, removing only a folder this script made: one with its marker, or holding nothing but
# a demo's own entries (runs of versions before the marker); anything else is left alone.
if [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
    foreign="$(ls -A "$out" | grep -vxE '\.hytrec-demo|raw|prepared|train|eval|export' || true)"
    if [ ! -f "$out/.hytrec-demo" ] && [ -n "$foreign" ]; then
        echo "demo: $out holds entries this script did not make ($(echo $foreign)); nothing was removed; set HYTREC_DEMO_DIR to a new folder" >&2
        exit 2
    fi
elif [ -e "$out" ] && [ ! -d "$out" ]; then
    echo "demo: $out is a file, not a folder; set HYTREC_DEMO_DIR to a new folder" >&2
    exit 2
fi
bash "$here/scripts/setup.sh"
venv="${HYTREC_VENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
quiet='is_fx_tracing|TopologyFactory|HeuristicalStorage|dense_tensor_estimate|warn|Warning'
events="${HYTREC_DEMO_EVENTS:-300000}"
rm -rf "$out"  # checked above: absent, empty, or a demo's own folder
mkdir -p "$out"
touch "$out/.hytrec-demo"

echo "== 1/7 synthetic events ($events) -> $out/raw"
python -m data_prep.synthetic --events "$events" --out "$out/raw" --seed 0

echo "== 2/7 prepare -> $out/prepared"
hytrec-prep "$out/raw/events" "$out/prepared" --config configs/prep/synthetic.yaml

echo "== 3/7 dataset and batch statistics (one epoch through the loader)"
python -m hytrec_torchrec.data.inspect "$out/prepared" max_len=2000 batch_size=32 2>/dev/null

echo "== 4/7 train: torchx run -s local_cwd launch/components.py:train -j 1x2"
torchx run -s local_cwd launch/components.py:train --config configs/demo.yaml -j 1x2 \
    "run.dir=$out/train" "data.path=$out/prepared" 2> >(grep -vE "$quiet" >&2)
cat "$out/train/summary.json"; echo
[ -s "$out/train/curves.png" ] || { echo "demo: no $out/train/curves.png" >&2; exit 1; }

echo "== 5/7 evaluate: torchx run -s local_cwd launch/components.py:evaluate -j 1x2"
torchx run -s local_cwd launch/components.py:evaluate --checkpoint "$out/train" \
    --data "$out/prepared" --out "$out/eval" -j 1x2 2> >(grep -vE "$quiet" >&2)
cat "$out/eval/report.md"
[ -s "$out/eval/length_buckets.png" ] || { echo "demo: no $out/eval/length_buckets.png" >&2; exit 1; }
echo "note: test HR@10 (above) is far above validation HR@10 (summary.json) by construction: the generator plants" \
     "each user's last event (the test target) as a favourite or burst item, while the second-last (the validation" \
     "target) is an ordinary draw (data_prep/synthetic.py, n_targets=1)"

echo "== 6/7 export: hytrec-export -> $out/export (TorchScript, vocabularies, model card)"
hytrec-export --checkpoint "$out/train" --out "$out/export" 2> >(grep -vE "$quiet" >&2)

echo "== 7/7 serve: torch-only process answering requests with $out/export/model.pt"
python examples/serve.py --model-dir "$out/export" --num 3 --k 5 --check-torch-only

echo
echo "done: $out/train (sharding plan, checkpoints, TensorBoard, summary.json, curves.png),"
echo "      $out/eval (metrics.json, report.md, length_buckets.png), $out/export (model.pt, model_card.json)"
