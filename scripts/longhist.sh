#!/usr/bin/env bash
# Long-history benchmark runs of docs/results.md, by name: the data of one scenario of
# data_prep.synthetic_longhist, each model recipe trained on it, their paired evaluation.
#
#   bash scripts/longhist.sh data SCENARIO          # generate + prepare (favourites | periodic | interleaved
#                                                   #   | replenishment | category_return)
#   bash scripts/longhist.sh list                   # recipe names, one line each
#   bash scripts/longhist.sh flags NAME             # the overrides NAME trains with
#   bash scripts/longhist.sh train SCENARIO NAME [key=value ...]
#                                                   # torchx run -j 1x2 into $LONGHIST_DIR/SCENARIO/NAME
#   bash scripts/longhist.sh eval SCENARIO NAME [NAME ...] [key=value ...]
#                                                   # hytrec-eval with the scenario's far/recent side
#                                                   # file; several names give one report with paired
#                                                   # differences (the first name is the reference)
#   bash scripts/longhist.sh all SCENARIO           # data, every recipe, one evaluation of all
#
# Environment: LONGHIST_DIR (default runs/longhist). Every recipe is configs/synthetic_longhist.yaml
# (300 steps: 30 warm-up, cosine over the last 150) plus its overrides; tests/test_shipped_configs.py
# checks that each loads and validates. On 2 CPU cores a run takes 5-12 minutes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
root="${LONGHIST_DIR:-runs/longhist}"
config="${LONGHIST_CONFIG:-configs/synthetic_longhist.yaml}"

gd="model.tadn.gating=gated_delta"
# the generator's purchase-like behaviour (replenishment: staples are bought with "pay", viewed with
# "click"; the other scenarios have clicks only, where the mapping leaves every event a cycle event)
cyc="data.cycle_behaviors=[pay]"
# the repeat path as it was before its cycle features (080d593): every recipe starts from it, so that
# the rows of docs/results.md keep their meaning now that the defaults have cycles, the hidden-layer
# scorer and the repeat path at 10x the learning rate; recipes that switch them say so after it
rep0="model.repeat_cycles=false model.repeat_scorer=additive optim.repeat_lr_scale=1"
# One line per recipe: NAME OVERRIDE ... ("-" = none). hytrec is the long-memory tower
# (gated delta rule, time inputs, intent readout); the abl_* rows switch one of its parts back;
# *_copy add the copy path in embedding space (model.far_copy); *_repeat add the repeat path's
# score bonus for history items (model.repeat); *_sdrop fuse half the training rows without the
# short branch (model.fusion.short_dropout); *_cycles add the repeat path's cycle features
# (model.repeat_cycles), *_gate its repeat/explore gate (model.repeat_gate); *_lr20, *_lr200 train
# the repeat path at 20x, 200x the tower's learning rate (optim.repeat_lr_scale); *_mlp score its
# pairs through a hidden layer instead of a sum of bucket embeddings (model.repeat_scorer=mlp); *_lr10
# train the repeat path at 10x; *_aux give the long branch its own loss (model.long_aux_weight=1: the
# fused loss's weight, so neither dominates by construction). cat_*: for the category_return scenario,
# today's default tower (TowerConfig's defaults, not $rep0) reading the category as an input feature
# ($catf); cat_interests adds its 16 top categories' interests (model.interests, docs/ulim.md),
# cat_short_only and cat_short_interests drop the long branch; cat_ulim is ULIM's head on the
# interests tower (model.kind=ulim, docs/ulim.md).
catf="model.features=[item,category]"
recipes="\
hytrec $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true
hytrec_paper $rep0 model.long_pattern=TTTS model.tadn.gating=paper model.long_readout=last model.long_time_inputs=false
short_only $rep0 model.long_pattern=
sasrec $rep0 model.short_len=0 model.long_pattern=SS model.long_readout=last
hytrec_copy $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.far_copy=true
short_copy $rep0 model.long_pattern= model.far_copy=true
hytrec_copy_wide $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.far_copy=true model.tadn.key_dim=128
short_repeat $rep0 model.long_pattern= model.repeat=true
hytrec_repeat $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true
hytrec_repeat_sdrop $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.fusion.short_dropout=0.5
paper_repeat $rep0 model.long_pattern=TTTS model.tadn.gating=paper model.long_readout=last model.long_time_inputs=false model.repeat=true
abl_last_readout $rep0 model.long_pattern=TTT $gd model.long_readout=last model.long_time_inputs=true
abl_paper_gating $rep0 model.long_pattern=TTT model.tadn.gating=paper model.long_readout=intent model.long_time_inputs=true
abl_no_time $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=false
short_cycles $rep0 model.long_pattern= model.repeat=true model.repeat_cycles=true $cyc
short_cycles_gate $rep0 model.long_pattern= model.repeat=true model.repeat_cycles=true model.repeat_gate=true $cyc
short_gate $rep0 model.long_pattern= model.repeat=true model.repeat_gate=true
hytrec_cycles $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true $cyc
hytrec_cycles_gate $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_gate=true $cyc
hytrec_repeat_lr20 $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true optim.repeat_lr_scale=20
hytrec_cycles_gate_lr20 $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_gate=true $cyc optim.repeat_lr_scale=20
short_cycles_gate_lr20 $rep0 model.long_pattern= model.repeat=true model.repeat_cycles=true model.repeat_gate=true $cyc optim.repeat_lr_scale=20
hytrec_cycles_gate_lr200 $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_gate=true $cyc optim.repeat_lr_scale=200
hytrec_repeat_mlp $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_scorer=mlp
hytrec_cycles_mlp $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_scorer=mlp $cyc
short_cycles_mlp $rep0 model.long_pattern= model.repeat=true model.repeat_cycles=true model.repeat_scorer=mlp $cyc
hytrec_cycles_mlp_lr10 $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_scorer=mlp $cyc optim.repeat_lr_scale=10
short_cycles_mlp_lr10 $rep0 model.long_pattern= model.repeat=true model.repeat_cycles=true model.repeat_scorer=mlp $cyc optim.repeat_lr_scale=10
hytrec_cycles_mlp_lr10_aux $rep0 model.long_pattern=TTT $gd model.long_readout=intent model.long_time_inputs=true model.repeat=true model.repeat_cycles=true model.repeat_scorer=mlp $cyc optim.repeat_lr_scale=10 model.long_aux_weight=1.0
cat_default $catf
cat_short_only $catf model.long_pattern=
cat_interests $catf model.interests.count=16
cat_short_interests $catf model.long_pattern= model.interests.count=16
cat_ulim $catf model.kind=ulim model.interests.count=16"

# shellcheck source=scripts/lib/recipes.sh
source "$here/scripts/lib/recipes.sh"



scenario_ok() {
    case "$1" in
        favourites|periodic|interleaved|replenishment|category_return) ;;
        *) echo "unknown scenario '$1'; one of: favourites periodic interleaved replenishment category_return" >&2
           exit 2 ;;
    esac
}


data() {
    local sc="$1"; scenario_ok "$sc"; activate
    local dir="$root/$sc"
    if [ -f "$dir/prepared/meta.json" ]; then
        echo "[longhist] $dir/prepared exists (delete it to prepare again)"
        return
    fi
    python -m data_prep.synthetic_longhist --scenario "$sc" --out "$dir/raw" --seed 1
    hytrec-prep "$dir/raw/events" "$dir/prepared" --config configs/prep/synthetic.yaml
    # the reference rankers have no oracle for category_return (its targets are new items)
    [ "$sc" = category_return ] || python benchmarks/longhist_heuristics.py "$dir/raw" || true
}

train() {
    local sc="$1" name="$2"; shift 2; scenario_ok "$sc"
    local spec; spec="$(recipe "$name")"
    [ -f "$root/$sc/prepared/meta.json" ] || { echo "[longhist] no prepared data: run '$0 data $sc' first" >&2; exit 2; }
    activate
    # shellcheck disable=SC2086  # the recipe is a word list on purpose
    set -- --config "$config" $spec "run.dir=$root/$sc/$name" "data.path=$root/$sc/prepared" "$@"
    echo "[longhist] torchx run -s local_cwd launch/components.py:train -j 1x2 $*"
    torchx run -s local_cwd launch/components.py:train -j 1x2 "$@"
}

evaluate() {
    # SCENARIO NAME ... then evaluation overrides (key=value, e.g. split=valid to choose between
    # recipes without looking at the test split); a split other than test gets its own report folder
    local sc="$1"; shift; scenario_ok "$sc"
    local names=() overrides=() split=test
    split_eval_args "$@"
    [ "${#names[@]}" -ge 1 ] || { echo "usage: $0 eval SCENARIO NAME ... [key=value ...]" >&2; exit 2; }
    activate
    run_checkpoints longhist "$root/$sc" "${names[@]}"
    local out="$root/$sc/eval/$eval_tag" side=("segments.side_file=$root/$sc/raw/segments.parquet")
    # the side file's kinds describe each user's test target: other splits go without it
    [ "$split" = test ] || { out="$root/$sc/eval/$split/$eval_tag"; side=(); }
    hytrec-eval "${eval_args[@]}" --data "$root/$sc/prepared" --out "$out" --overwrite \
        ${side[@]+"${side[@]}"} data.batch_size=64 threads=1 ${overrides[@]+"${overrides[@]}"}
    echo "[longhist] report: $out/report.md"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    data) [ "$#" -eq 1 ] || { echo "usage: $0 data SCENARIO" >&2; exit 2; }; data "$1" ;;
    list) names ;;
    flags) [ "$#" -eq 1 ] || { echo "usage: $0 flags NAME" >&2; exit 2; }; recipe "$1" ;;
    train) [ "$#" -ge 2 ] || { echo "usage: $0 train SCENARIO NAME [key=value ...]" >&2; exit 2; }; train "$@" ;;
    eval) evaluate "$@" ;;
    all)
        [ "$#" -eq 1 ] || { echo "usage: $0 all SCENARIO" >&2; exit 2; }
        data "$1"
        for n in $(names); do train "$1" "$n"; done
        # shellcheck disable=SC2046
        evaluate "$1" $(names)
        ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = help ] || [ "$cmd" = -h ] || exit 2 ;;
esac
