#!/usr/bin/env bash
# Run the documented commands for real, in a scratch copy of this checkout:
#   first the README's first-screen demo (bash scripts/demo.sh), then every fenced command of
#   README.md and docs/*.md (as tests/test_docs_commands.py extracts them) that can run on a CPU
#   machine, in the order the docs give them, with PASS / FAIL / SKIP per command and a summary.
#
# usage: bash scripts/check_docs_commands.sh [--list] [--only REGEX] [--steps N] [SCRATCH_DIR]
#   --list        print the plan (what would run, what is skipped and why) and run nothing
#   --only REGEX  run only the commands whose "DOC: COMMAND" line matches REGEX (the demo still runs first)
#   --steps N     shorten the experiment scripts' training recipes (bash scripts/ml1m.sh|longhist.sh|
#                 completejourney.sh train ...) to N steps: the recipe's own flags, then
#                 train.max_steps=N train.checkpoint_every=0 optim.schedule.decay_steps=N; such a
#                 command is marked "shortened to N steps" in the plan and its PASS line. Without it
#                 each recipe trains its whole schedule (ML-1M's 4020-step recipes: 2-3 hours each)
#   SCRATCH_DIR   where the copy goes (default: a new folder under ${TMPDIR:-/tmp}); must not exist
#
# Not part of the test suite: the demo, training recipes and full evaluations take minutes to
# hours on a CPU. The cheap parts (argument parsing, config loading, --help, recipe flags,
# torchx --dryrun) run in tests/test_docs_commands.py.
#
# Skipped: commands with placeholders (PREPARED_DIR, OUT, N, ...; a|b alternatives), the slurm
# and kubernetes submissions (rendered with --dryrun by the tests), scripts/test.sh (the test
# suite; HYTREC_CHECK_TESTS=1 runs it), a repeat of a command that already ran, and, when its
# turn comes, a command whose input (hytrec-prep's INPUT, --checkpoint, --data, --model,
# hytrec-compare's folders) is not there because the step making it was skipped or failed or it
# stands for data of your own. Paths under /tmp/ in a command are put under SCRATCH_DIR/_tmp/.
# Each command runs without a shell (stdin closed), with .venv/bin first on PATH and
# HYTREC_CHECK_TIMEOUT seconds at most (default 3600); its output goes to SCRATCH_DIR/_check/.
# Exit status: 0 when nothing failed, 1 otherwise, 2 for bad arguments.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
list=0
only=""
steps=""
scratch=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --list) list=1 ;;
        --only) [ "$#" -ge 2 ] || { echo "check_docs_commands: --only needs a REGEX" >&2; exit 2; }; only="$2"; shift ;;
        --steps) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "check_docs_commands: --steps needs a positive integer" >&2; exit 2; }; steps="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "check_docs_commands: unknown option $1" >&2; exit 2 ;;
        *) scratch="$1" ;;
    esac
    shift
done
venv="${HYTREC_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || bash "$here/scripts/setup.sh"
if [ "$list" = 1 ]; then  # the plan only: read the docs where they are, copy nothing
    cd "$here"
    scratch="${scratch:-SCRATCH_DIR}"
elif [ -z "$scratch" ]; then
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/hytrec-docs.XXXXXX")"
elif [ -e "$scratch" ]; then
    echo "check_docs_commands: $scratch exists; give a new folder" >&2
    exit 2
else
    mkdir -p "$scratch"
fi
if [ "$list" = 0 ]; then
    scratch="$(cd "$scratch" && pwd)"
    # the checkout as it is (tracked files and untracked ones git does not ignore), the venv linked
    (cd "$here" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$scratch"
    ln -s "$venv" "$scratch/.venv"
    mkdir -p "$scratch/_check" "$scratch/_tmp"
    echo "check_docs_commands: scratch copy in $scratch"
    cd "$scratch"
fi
export PATH="$venv/bin:$PATH" PYTHONPATH="$PWD" PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export CHECK_LIST="$list" CHECK_ONLY="$only" CHECK_STEPS="$steps" CHECK_SCRATCH="$scratch"
exec "$venv/bin/python" - <<'PY'
import glob
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
from tests.test_docs_commands import documented_commands  # noqa: E402

scratch = Path(os.environ["CHECK_SCRATCH"])
listing = os.environ["CHECK_LIST"] == "1"
only = re.compile(os.environ["CHECK_ONLY"]) if os.environ["CHECK_ONLY"] else None
limit = float(os.environ.get("HYTREC_CHECK_TIMEOUT", "3600"))
steps = int(os.environ["CHECK_STEPS"]) if os.environ["CHECK_STEPS"] else None
RECIPE_SCRIPTS = ("scripts/ml1m.sh", "scripts/longhist.sh", "scripts/completejourney.sh")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def placeholder(argv):
    for a in argv[1:]:
        if "|" in a:
            return f"alternatives {a!r}"
        for part in re.split(r"[=:,/]", a.lstrip("-")):
            if PLACEHOLDER.match(part) and part not in ("HOME",):
                return f"placeholder {part}"
    return None


def plan_skip(argv):
    """Why the command is not run at all, or None."""
    if argv[0] == "torchx" and re.search(r"-s (slurm|kubernetes)", " ".join(argv)):
        return "cluster submission (rendered with --dryrun by tests/test_docs_commands.py)"
    if argv[:2] == ["bash", "scripts/test.sh"] and os.environ.get("HYTREC_CHECK_TESTS") != "1":
        return "the test suite (HYTREC_CHECK_TESTS=1 runs it)"
    return placeholder(argv)


def shorten(argv):
    """The command with its training recipe cut to ``--steps`` steps, or None when it is not one."""
    if steps is None or argv[:1] != ["bash"] or tuple(argv[1:3]) not in {(s, "train") for s in RECIPE_SCRIPTS}:
        return None
    return argv + [f"train.max_steps={steps}", "train.checkpoint_every=0",
                   f"optim.schedule.decay_steps={steps}"]


def rewrite(argv):
    out = []
    for a in argv:
        a = os.path.expandvars(a)
        a = re.sub(r"(^|=|:)/tmp/", lambda m: f"{m.group(1)}{scratch}/_tmp/", a)
        out.append(a)
    return out


def inputs(argv):
    """The paths this command reads that an earlier step (or the user) must have made."""
    prog, args, found = argv[0], argv[1:], []
    if prog == "hytrec-prep" and "--merge" not in args:
        pos = [a for a in args if not a.startswith("-") and "=" not in a]
        if pos:
            fmt, sep, rest = pos[0].partition(":")  # a dataset source: FORMAT:DIR
            found.append(rest if sep and fmt.isidentifier() else pos[0])
    if prog == "hytrec-train":  # the prepared data it trains on
        found += [a.split("=", 1)[1] for a in args if a.startswith("data.path=")]
    if prog in ("hytrec-eval", "hytrec-export"):
        for flag in ("--checkpoint", "--data", "--model"):
            found += [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    if prog == "torchx":
        for flag in ("--checkpoint", "--data", "--model"):
            found += [p for i, a in enumerate(args[:-1]) if a == flag for p in args[i + 1].split(",")]
    if prog == "hytrec-compare":
        vals = {"--metrics", "--json", "--plot", "--length-buckets"}
        skip = False
        for a in args:
            if a.startswith("-"):
                skip = a in vals
                continue
            if not skip:
                found.append(a.split(":", 1)[0])
    if prog == "python" and args[:1] == ["examples/serve.py"]:
        found += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model-dir"]
    if prog == "python" and args[:2] == ["-m", "data_prep.target_kinds"] and len(args) > 2:
        found.append(args[2])  # the prepared dataset it reads
    return found


def missing(argv):
    for p in inputs(argv):
        if not glob.glob(p):
            return p
    return None


commands = list(documented_commands())
demo = next((doc, env, argv) for doc, env, argv in commands if doc == "README.md")
order = [("README.md (first screen)", demo[1], demo[2])] + [c for c in commands if c != demo]
seen, counts = set(), {"PASS": 0, "FAIL": 0, "SKIP": 0}
for n, (doc, env, argv) in enumerate(order, 1):
    cmd = shlex.join([f"{k}={v}" for k, v in env.items()] + argv)
    head = f"[{n:2d}/{len(order)}] {doc}: {cmd}"
    why = plan_skip(argv)
    if why is None and cmd in seen:
        why = "ran above"
    if why is None and only is not None and n > 1 and not only.search(f"{doc}: {cmd}"):
        why = "not selected by --only"
    seen.add(cmd)
    if why is None and not listing:
        gone = missing(rewrite(argv))
        if gone:
            why = f"input {gone} is not there (made by a step that did not run, or data of your own)"
    if why is not None:
        counts["SKIP"] += 1
        print(f"SKIP  {head}\n      {why}", flush=True)
        continue
    short = shorten(argv)
    note = f"  (shortened to {steps} steps)" if short else ""
    if listing:
        print(f"RUN   {head}{note}", flush=True)
        continue
    log = scratch / "_check" / f"{n:02d}.log"
    print(f"...   {head}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(rewrite(short or argv), cwd=scratch, env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        except FileNotFoundError as exc:
            print(exc, file=f)
            rc = "not found"
    dt = time.time() - t0
    last = ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or [""])[-1]
    status = "PASS" if rc == 0 else "FAIL"
    counts[status] += 1
    print(f"{status}  {dt:7.1f} s  rc={rc}{note}" + ("" if rc == 0 else f"  log {log}\n      {last[:300]}"), flush=True)
print(f"check_docs_commands: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
      f"{' (plan only)' if listing else ''}; logs in {scratch / '_check'}", flush=True)
sys.exit(1 if counts["FAIL"] else 0)
PY
