# Shared by the experiment scripts (scripts/ml1m.sh, longhist.sh, completejourney.sh), sourced after
# they set $here (the repository root) and $recipes (one line per recipe: NAME OVERRIDE ...,
# "-" = no override).

# the recipe names, one per line
names() { awk '{print $1}' <<< "$recipes"; }

# NAME -> its overrides ("" for "-"). NAME_sN without a line of its own is recipe NAME trained with
# seed N (run.seed=N data.seed=N: initialisation and sampling), so a recipe's other seeds need no
# lines. An unknown NAME is an error listing the known ones (status 2).
recipe() {
    local line
    line="$(awk -v n="$1" '$1 == n {$1 = ""; sub(/^ +/, ""); print}' <<< "$recipes")"
    if [ -z "$line" ] && [[ "$1" =~ ^(.+)_s([0-9]+)$ ]] && line="$(recipe "${BASH_REMATCH[1]}" 2> /dev/null)"; then
        echo "${line:+$line }run.seed=${BASH_REMATCH[2]} data.seed=${BASH_REMATCH[2]}"
        return 0
    fi
    [ -n "$line" ] || { echo "unknown recipe '$1'; one of: $(names | tr '\n' ' ') (NAME_sN: NAME with seed N)" >&2; return 2; }
    [ "$line" = "-" ] && line=""
    echo "$line"
}

# the pinned environment (scripts/setup.sh) and its tools on PATH
activate() {
    bash scripts/setup.sh
    export PATH="${HYTREC_VENV:-$here/.venv}/bin:$PATH"
    export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
}

# run_checkpoints TAG_PREFIX DIR NAME...: sets eval_args (--checkpoint DIR/NAME ...) and eval_tag
# (NAME+NAME...) for one side-by-side hytrec-eval; a NAME that is not a recipe or has no run is an error
run_checkpoints() {
    local prefix="$1" dir="$2" name; shift 2
    eval_args=(); eval_tag=""
    for name in "$@"; do
        recipe "$name" > /dev/null || exit 2
        [ -e "$dir/$name" ] || { echo "[$prefix] no run $dir/$name" >&2; exit 2; }
        eval_args+=(--checkpoint "$dir/$name")
        eval_tag="${eval_tag:+${eval_tag}+}${name}"
    done
}

# split_eval_args ARG...: an evaluation command line into names (recipe names), overrides (key=value,
# for hytrec-eval) and split (from split=NAME, which stays among the overrides; test by default). The
# caller declares the three as locals first; bash's dynamic scope lets this set them.
split_eval_args() {
    names=(); overrides=(); split=test
    local arg
    for arg in "$@"; do
        case "$arg" in
            split=*) split="${arg#split=}"; overrides+=("$arg") ;;
            *=*) overrides+=("$arg") ;;
            *) names+=("$arg") ;;
        esac
    done
}
