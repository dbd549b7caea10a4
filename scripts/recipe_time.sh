#!/usr/bin/env bash
# The demo recipe's two training objectives at equal wall time, on a long-history set
# (docs/results.md, "Sampled cutoffs or every position, at equal wall time").
#
#   bash scripts/recipe_time.sh list                       # recipe names, one line each
#   bash scripts/recipe_time.sh train SET NAME [key=value ...]
#                                                          # torchx run -j 1x2 into runs/recipe_time/SET/NAME
#                                                          # (wall time in NAME.time)
#   bash scripts/recipe_time.sh eval SET NAME [NAME ...] [split=valid]
#                                                          # hytrec-eval side by side, paired
#
# SET: cj (runs/completejourney/prepared: bash scripts/completejourney.sh data), ml1m (runs/ml1m/prepared:
# bash scripts/ml1m.sh data), replenishment (runs/longhist/replenishment/prepared: bash
# scripts/longhist.sh data replenishment). Every recipe is configs/demo.yaml with windows of up to
# 1,536 events (the recipe outside users train with on their own long histories) plus its overrides:
#   cut_*: the demo recipe as it was: 4 sampled cutoffs per user, one target each, 32 windows per rank,
#          600 steps;
#   ctx_*: every position a target (data.all_positions) in context windows: each window supervises its
#          last 64 events (data.supervised_rows) with up to 1,536 events of context before them, 16
#          windows per rank; trained for the wall time its cut_* run took (train.max_minutes from
#          cut_*'s summary.json, so train cut_* first, on the same idle machine);
#   *_short: the short-only ablation (model.long_pattern=), the same recipe otherwise;
#   cut_resid: cut_default with the long branch added to the fused short branch through a scale
#          that starts at 0 (model.fusion.long=residual);
#   ctxs_short: ctx_short at the steps ctx_default reached (from its summary.json), for the pair
#          "default against its short-only ablation at the same recipe and steps"; ctxs_notime: the
#          same for the default without the long branch's time inputs (model.long_time_inputs=false);
#   cut_lastread, cut_notime, cut_norep, cut_short_norep, cut_resid, cut_nograd, cut_*_noclip,
#          cut4_*, cutc*_*: one switch each against cut_default / cut_short (the MovieLens-1M
#          diagnostics of docs/results.md);
#   cut_time: cut_default with the long branch's time inputs (model.long_time_inputs=true; cut_default
#          before demo.yaml turned them off is that run);
#   NAME_sN: any recipe NAME with seed N (run.seed=N data.seed=N: initialisation and cutoffs;
#          scripts/lib/recipes.sh), for how much one training's result moves from seed to seed: the
#          rows of docs/results.md "Seeds" are cut_default_sN, cut_short_sN, cut_time_sN (N = 1..3),
#          cut_resid_sN, cut_lastread_sN, cut_nograd_sN (N = 0..3) and ctx_default_s1 (its wall-time
#          budget: cut_default_s1's).
# Validation HR@10 (split=valid, every user) chooses between the objectives; the test split reports.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
common="data.max_len=1536 train.validate_every=0 train.checkpoint_every=0 run.progress=false run.log_every=50"
ctx="data.all_positions=true data.cutoffs_per_user=0 data.supervised_rows=64 data.batch_size=16 train.max_steps=5000"
recipes="\
cut_default   train.max_steps=600
cut_short     train.max_steps=600 model.long_pattern=
ctx_default   $ctx
ctx_short     $ctx model.long_pattern=
ctxs_short    $ctx model.long_pattern=
ctxs_notime   $ctx model.long_time_inputs=false
cut_resid     train.max_steps=600 model.fusion.long=residual
cut_default_noclip train.max_steps=600 optim.grad_clip=null
cut_short_noclip   train.max_steps=600 optim.grad_clip=null model.long_pattern=
cut_nograd    train.max_steps=600 model.long_input_grad=false
cut4_default  train.max_steps=2400
cut4_short    train.max_steps=2400 model.long_pattern=
cutc_default  train.max_steps=600 model.similarity=cosine model.temperature=0.05
cutc_short    train.max_steps=600 model.similarity=cosine model.temperature=0.05 model.long_pattern=
cutcd_default train.max_steps=600 model.similarity=cosine model.temperature=0.05 model.dropout=0.1
cutcd_short   train.max_steps=600 model.similarity=cosine model.temperature=0.05 model.dropout=0.1 model.long_pattern=
cut_lastread  train.max_steps=600 model.long_readout=last
cut_notime    train.max_steps=600 model.long_time_inputs=false
cut_norep     train.max_steps=600 model.repeat=false
cut_short_norep train.max_steps=600 model.repeat=false model.long_pattern=
cut_time      train.max_steps=600 model.long_time_inputs=true"

# shellcheck source=scripts/lib/recipes.sh
source "$here/scripts/lib/recipes.sh"

# SET -> its prepared folder, the evaluation's side file of target kinds ("" if none) and the data
# set's own training keys (setargs): replenishment's purchase-like behaviour is "pay" (staples are
# viewed between purchases; data.cycle_behaviors, docs/data_prep.md); every Complete Journey event is a
# purchase and MovieLens has one behaviour, so they need none.
data_of() {
    setargs=()
    case "$1" in
        cj) prepared=runs/completejourney/prepared; side=runs/completejourney/raw/segments.parquet ;;
        ml1m) prepared=runs/ml1m/prepared; side="" ;;
        replenishment) prepared=runs/longhist/replenishment/prepared; side=runs/longhist/replenishment/raw/segments.parquet
            setargs=("data.cycle_behaviors=[pay]") ;;
        *) echo "unknown set '$1'; one of: cj ml1m replenishment" >&2; exit 2 ;;
    esac
    [ -f "$prepared/meta.json" ] || { echo "[recipe_time] no prepared data in $prepared (see the header)" >&2; exit 2; }
}

# SET RUN KEY -> KEY of runs/recipe_time/SET/RUN/summary.json; an error naming RUN if it has none
summary_field() {
    local ref="runs/recipe_time/$1/$2/summary.json"
    python -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$ref" "$3" 2>/dev/null \
        || { echo "[recipe_time] $ref has no $3: train $2 first" >&2; return 2; }
}

train() {
    local set="$1" name="$2"; shift 2
    local spec; spec="$(recipe "$name")"
    data_of "$set"
    activate
    local dir="runs/recipe_time/$set/$name" budget=()
    mkdir -p "runs/recipe_time/$set"
    if [[ "$name" == ctx_* ]]; then  # the wall time of the sampled-cutoff run of the same model
        local secs; secs="$(summary_field "$set" "cut_${name#ctx_}" wall_seconds)" || exit 2
        budget=("train.max_minutes=$(python -c "print(round($secs / 60, 3))")")
    elif [[ "$name" == ctxs_* ]]; then  # the steps of ctx_default
        local steps; steps="$(summary_field "$set" ctx_default step)" || exit 2
        budget=("train.max_steps=$steps")
    fi
    # shellcheck disable=SC2086  # the recipe is a word list on purpose
    set -- --config configs/demo.yaml $common $spec ${setargs[@]+"${setargs[@]}"} ${budget[@]+"${budget[@]}"} "run.dir=$dir" "data.path=$prepared" "$@"
    echo "[recipe_time] torchx run -s local_cwd launch/components.py:train -j 1x2 $*"
    local t0; t0="$(date +%s)"
    torchx run -s local_cwd launch/components.py:train -j 1x2 "$@"
    echo "$(( $(date +%s) - t0 )) s wall, 2 ranks: $*" > "$dir.time"
    cat "$dir.time"
}

evaluate() {
    local set="$1"; shift
    local names=() overrides=() split=test
    split_eval_args "$@"
    [ "${#names[@]}" -ge 1 ] || { echo "usage: $0 eval SET NAME ... [key=value ...]" >&2; exit 2; }
    data_of "$set"
    activate
    run_checkpoints recipe_time "runs/recipe_time/$set" "${names[@]}"
    local out="runs/recipe_time/$set/eval/$split/$eval_tag" sides=()
    # the side file's kinds describe each user's test target: other splits go without it
    [ "$split" = test ] && [ -n "$side" ] && sides=("segments.side_file=$side")
    hytrec-eval "${eval_args[@]}" --data "$prepared" --out "$out" --overwrite \
        ${sides[@]+"${sides[@]}"} data.batch_size=32 threads=1 ${overrides[@]+"${overrides[@]}"}
    echo "[recipe_time] report: $out/report.md"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    list) names ;;
    train) [ "$#" -ge 2 ] || { echo "usage: $0 train SET NAME [key=value ...]" >&2; exit 2; }; train "$@" ;;
    eval) [ "$#" -ge 2 ] || { echo "usage: $0 eval SET NAME ... [key=value ...]" >&2; exit 2; }; evaluate "$@" ;;
    *) echo "usage: $0 list|train SET NAME|eval SET NAME ... [key=value ...]" >&2; exit 2 ;;
esac
