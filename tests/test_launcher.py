"""A rank of a local torchx job stops when torchx (or torchrun) is killed (hytrec_torchrec/launcher.py).

The chain torchx -> torchrun -> rank is rebuilt with three small Python processes: the "torchx"
stand-in starts the "torchrun" stand-in in a new session (as torchx's local scheduler does), which
starts the rank; the rank calls :func:`stop_when_launcher_exits` and sleeps. ``kill -9`` of either
launcher must end the rank within a few polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hytrec_torchrec.launcher import LAUNCHER_GONE_EXIT, parent_of, stop_when_launcher_exits

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")

RANK = textwrap.dedent("""
    import os, sys, time
    from hytrec_torchrec.launcher import stop_when_launcher_exits
    started = stop_when_launcher_exits("hytrec-test", poll_s=0.1)
    open(sys.argv[1], "w").write(f"{os.getpid()} {int(started)}")
    time.sleep(60)
""")
# the torchrun stand-in: start the rank, wait for it, record its exit status
RUNNER = textwrap.dedent("""
    import subprocess, sys
    rc = subprocess.call([sys.executable, "-c", sys.argv[1], sys.argv[2]], stderr=open(sys.argv[3], "w"))
    open(sys.argv[4], "w").write(str(rc))
""")
# the torchx stand-in: start torchrun in a new session (torchx's local scheduler does) and wait
LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c"] + sys.argv[1:], start_new_session=True).wait()
""")


def _wait_for(path: Path, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout} s")


def _alive(pid: int) -> bool:
    return parent_of(pid) is not None


def _chain(tmp_path: Path, job_id: str) -> tuple[subprocess.Popen, int, int]:
    """Start torchx -> torchrun -> rank; returns (torchx process, torchrun pid, rank pid)."""
    env = dict(os.environ, TORCHX_JOB_ID=job_id)
    files = [str(tmp_path / n) for n in ("rank_pid", "rank_err", "rank_rc")]
    torchx = subprocess.Popen([sys.executable, "-c", LAUNCHER, RUNNER, RANK, files[0], files[1], files[2]],
                              env=env)
    rank_pid, started = map(int, _wait_for(tmp_path / "rank_pid").split())
    runner_pid = parent_of(rank_pid)
    assert runner_pid is not None and parent_of(runner_pid) == torchx.pid
    assert started == (1 if job_id.startswith("local") else 0)
    return torchx, runner_pid, rank_pid


def _stopped(tmp_path: Path, rank_pid: int) -> None:
    assert _wait_for(tmp_path / "rank_rc") == str(LAUNCHER_GONE_EXIT)
    err = (tmp_path / "rank_err").read_text().strip()
    assert err.startswith("hytrec-test: rank ") and "which launched this local job, has exited" in err, err
    assert len(err.splitlines()) == 1
    assert not _alive(rank_pid)


def test_kill_9_of_torchx_stops_the_rank(tmp_path: Path) -> None:
    torchx, runner_pid, rank_pid = _chain(tmp_path, "local_cwd://torchx/hytrec-train-x")
    torchx.send_signal(signal.SIGKILL)
    torchx.wait()
    _stopped(tmp_path, rank_pid)
    assert "torchx (pid" in (tmp_path / "rank_err").read_text()


def test_kill_9_of_torchrun_stops_the_rank(tmp_path: Path) -> None:
    torchx, runner_pid, rank_pid = _chain(tmp_path, "local_cwd://torchx/hytrec-train-y")
    os.kill(runner_pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while _alive(rank_pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(rank_pid)
    torchx.wait(timeout=30)


def test_a_cluster_job_or_a_plain_torchrun_is_not_watched(tmp_path: Path) -> None:
    torchx, runner_pid, rank_pid = _chain(tmp_path, "slurm://torchx/123")
    torchx.send_signal(signal.SIGKILL)
    torchx.wait()
    time.sleep(0.5)  # five polls of a watcher, had one started
    assert _alive(rank_pid)
    os.kill(rank_pid, signal.SIGKILL)
    _wait_for(tmp_path / "rank_rc")


def test_no_watcher_without_a_local_torchx_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHX_JOB_ID", raising=False)
    assert not stop_when_launcher_exits("x", exit_fn=lambda rc: None)
    monkeypatch.setenv("TORCHX_JOB_ID", "kubernetes://torchx/ns:job")
    assert not stop_when_launcher_exits("x", exit_fn=lambda rc: None)


def test_parent_of_reads_proc_and_is_none_for_a_missing_pid() -> None:
    assert parent_of(os.getpid()) == os.getppid()
    assert parent_of(2**22 + 12345) is None


# ---- hytrec-torchrun: torchrun whose failure is one line and the rank's exit status ----

def _torchrun(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "rank.py"
    script.write_text(body)
    env = dict(os.environ, LOGLEVEL="WARNING", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "hytrec_torchrec.torchrun", "--standalone", "--nproc_per_node", "1",
                           str(script)], capture_output=True, text=True, env=env, timeout=120)


def test_hytrec_torchrun_gives_the_rank_status_and_one_line(tmp_path: Path) -> None:
    res = _torchrun(tmp_path, "import sys\nprint('hytrec-x: bad input: row 3', file=sys.stderr)\nsys.exit(3)\n")
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and "ChildFailedError" not in res.stderr, res.stderr
    assert "hytrec-torchrun: rank 0 (local rank 0) exited with status 3; its own message is above" in res.stderr
    assert "hytrec-x: bad input: row 3" in res.stderr
    ok = _torchrun(tmp_path, "print('fine')\n")
    assert ok.returncode == 0 and "fine" in ok.stdout


def test_exit_status_of_a_signalled_rank_is_1() -> None:
    from hytrec_torchrec.torchrun import exit_status

    assert (exit_status(2), exit_status(3), exit_status(-15), exit_status(0), exit_status(255)) == (2, 3, 1, 1, 1)


def test_components_start_ranks_with_hytrec_torchrun() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("components", Path(__file__).parents[1] / "launch" / "components.py")
    assert spec is not None and spec.loader is not None
    components = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(components)
    for app in (components.train(), components.evaluate(checkpoint="c", data="d", out="o"),
                components.export(checkpoint="c", out="o")):
        role = app.roles[0]
        assert role.entrypoint == "bash" and role.args[1].startswith("hytrec-torchrun --rdzv_backend"), role.args
