#!/usr/bin/env bash
# Check the other stack (docs/install.md "Two stacks"; CI runs the suite on the default, 1.9): set it
# up in its own venv, then run the fast tests and the demo on it; one line per step (PASS / FAIL /
# SKIP, seconds) and a summary.
#
#   bash scripts/check_stack.sh                        # HYTREC_STACK=1.8 in ./.venv-1.8
#   HYTREC_VENV=/path bash scripts/check_stack.sh      # that venv (setup.sh makes it when missing)
#   HYTREC_STACK=1.9 HYTREC_VENV=.venv bash scripts/check_stack.sh    # the same check, default stack
#   bash scripts/check_stack.sh -k tower -x            # extra arguments go to pytest (tests step)
#
# Steps:
#   pins   requirements-cpu-1.9.txt pins what requirements-cpu.txt (1.8) pins, but for torch and
#          fbgemm-gpu-cpu (so a pin added to one file is not forgotten in the other)
#   setup  scripts/setup.sh with HYTREC_STACK and HYTREC_VENV (installs, or says it is up to date)
#   tests  the fast tests: scripts/test.sh without the files in SLOW below (each over a minute on a
#          CPU, together most of the suite's time; scripts/test.sh runs them all)
#   demo   scripts/demo.sh into HYTREC_DEMO_DIR (default: a new folder under ${TMPDIR:-/tmp}), its
#          torchx logs into the logs folder (TORCHXCONFIG), so runs/ of the checkout is left alone
# HYTREC_CHECK_STEPS="setup tests" runs some steps only. Each step's output goes to STEP.log in
# HYTREC_CHECK_LOGS (default: a new folder under ${TMPDIR:-/tmp}); a failed step prints its last lines.
# Exit status: 0 when every step run passed, 1 otherwise, 2 for bad settings.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HYTREC_STACK="${HYTREC_STACK:-1.8}"
export HYTREC_VENV="${HYTREC_VENV:-$here/.venv-$HYTREC_STACK}"
steps="${HYTREC_CHECK_STEPS:-pins setup tests demo}"
for s in $steps; do
    case "$s" in pins|setup|tests|demo) ;; *) echo "check_stack: unknown step '$s' (pins, setup, tests, demo)" >&2; exit 2 ;; esac
done
logs="${HYTREC_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/hytrec-check-stack.XXXXXX")}"
mkdir -p "$logs" || exit 2
logs="$(cd "$logs" && pwd)"

# The slow files, left out of the tests step: multi-rank trainings and evaluations, each file over a
# minute on 2 CPU cores by itself (the last five took 400-2000 s each, the rest of the suite 1400 s
# together, on 2 cores shared with 2-rank trainings). bash scripts/test.sh runs them all.
SLOW=(
    tests/test_train_distributed.py
    tests/test_serving_state.py
    tests/test_export.py
    tests/test_launch.py
    tests/test_train_errors.py
    tests/test_evaluate.py
    tests/test_bad_inputs.py
    tests/test_outputs_eval.py
    tests/test_eval_ranks.py
)
ignore=()
for f in "${SLOW[@]}"; do ignore+=("--ignore=$f"); done

cd "$here"
echo "check_stack: stack $HYTREC_STACK in $HYTREC_VENV; logs in $logs"
failed=0
setup_ok=1
declare -a summary=()

# step NAME DETAIL_COMMAND -- COMMAND...: runs COMMAND with its output in NAME.log, then prints
# "PASS|FAIL  NAME  SECONDS s  DETAIL" (DETAIL: what DETAIL_COMMAND prints from the log).
step() {
    local name="$1" detail_cmd="$2"; shift 3
    local log="$logs/$name.log" start rc secs detail status
    start="$(date +%s)"
    "$@" > "$log" 2>&1 < /dev/null
    rc=$?
    secs=$(( $(date +%s) - start ))
    detail="$(eval "$detail_cmd" < "$log" 2>/dev/null | tail -n 1)"
    if [ "$rc" = 0 ]; then status=PASS; else status=FAIL; failed=1; detail="exit $rc${detail:+; $detail}"; fi
    summary+=("$(printf '%-4s  %-5s  %5d s  %s' "$status" "$name" "$secs" "$detail")")
    echo "${summary[-1]}"
    if [ "$rc" != 0 ]; then
        echo "---- last lines of $log"; tail -n 30 "$log" | sed 's/^/    /'; echo "----"
    fi
    return "$rc"
}

# the requirement lines of a file but its stack's own (torch, fbgemm-gpu-cpu), without comments
common_pins() { sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d' -e '/^\(torch\|fbgemm-gpu-cpu\)==/d' "$1"; }
check_pins() {
    local other="requirements-cpu-1.9.txt"
    [ -f "$other" ] || { echo "no $other"; return 1; }
    if diff <(common_pins requirements-cpu.txt) <(common_pins "$other"); then
        echo "same pins as requirements-cpu.txt but torch, fbgemm-gpu-cpu: $(grep -E '^(torch|fbgemm-gpu-cpu)==' "$other" | paste -sd ' ')"
    else
        echo "$other and requirements-cpu.txt differ in more than torch and fbgemm-gpu-cpu (above: < requirements-cpu.txt, > $other)"
        return 1
    fi
}

skip() { summary+=("$(printf 'SKIP  %-5s  %5s    %s' "$1" - "$2")"); echo "${summary[-1]}"; }

# pytest's result line without its "=" rules; setup's ok / up-to-date line
pytest_line='grep -E "[0-9]+ (passed|failed|error)" | sed -E "s/=+//g; s/^ +| +\$//g"'
setup_line='grep -E "^\[setup\] (ok|.* is up to date)"'

for s in $steps; do
    case "$s" in
        pins)
            step pins "cat" -- check_pins ;;
        setup)
            step setup "$setup_line" -- bash scripts/setup.sh || setup_ok=0 ;;
        tests)
            if [ "$setup_ok" = 1 ]; then
                step tests "$pytest_line" -- bash scripts/test.sh -p no:cacheprovider "${ignore[@]}" "$@"
            else skip tests "setup failed"; fi ;;
        demo)
            if [ "$setup_ok" = 1 ]; then
                export HYTREC_DEMO_DIR="${HYTREC_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/hytrec-check-stack-demo.XXXXXX")}"
                # torchx's local logs too (.torchxconfig's log_dir is runs/torchx-logs in the checkout)
                if [ -z "${TORCHXCONFIG:-}" ]; then
                    sed "s#^log_dir = .*#log_dir = $logs/torchx-logs#" .torchxconfig > "$logs/torchxconfig"
                    export TORCHXCONFIG="$logs/torchxconfig"
                fi
                echo "      demo: into $HYTREC_DEMO_DIR (torchx logs: $(sed -n 's/^log_dir = //p' "$TORCHXCONFIG"))"
                step demo "grep -oE 'users=[0-9]+ hr@10=[0-9.]+ ndcg@10=[0-9.]+' | sed 's/^/test: /'" -- bash scripts/demo.sh
            else skip demo "setup failed"; fi ;;
    esac
done

versions="$("$HYTREC_VENV/bin/python" -c 'import torch, torchrec, fbgemm_gpu; print(f"torch {torch.__version__}, torchrec {torchrec.__version__}, fbgemm-gpu {fbgemm_gpu.__version__}")' 2>/dev/null || echo "stack not importable")"
echo
echo "check_stack summary: stack $HYTREC_STACK ($versions) in $HYTREC_VENV"
printf '  %s\n' "${summary[@]}"
if [ "$failed" = 0 ]; then echo "check_stack: all passed"; else echo "check_stack: FAILED (logs in $logs)"; fi
exit "$failed"
