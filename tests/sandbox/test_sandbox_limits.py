"""Runaway code is stopped and reported; the host is unaffected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import BwrapSandbox, UnsandboxedRunner

pytestmark = pytest.mark.sandbox

SHORT = SandboxLimits(timeout_s=3, cpu_s=30, memory_mb=512, max_procs=32, max_output_bytes=100_000)


def test_infinite_loop_is_killed_at_the_timeout(owned_sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, "import os\nos.fork()\nwhile True:\n    pass\n")
    result = owned_sandbox.run(workdir, argv, SHORT)
    assert result.timed_out is True
    assert result.killed == "timeout"
    assert result.exit_code is None
    if owned_sandbox.uid is not None:  # nothing of the sandbox survives the kill
        assert probes.pids_of_uid(owned_sandbox.uid) == set()


def test_cpu_limit_kills_with_a_signal(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, "while True:\n    pass\n")
    result = sandbox.run(workdir, argv, SandboxLimits(timeout_s=60, cpu_s=1, memory_mb=512))
    assert result.timed_out is False
    assert result.killed in ("signal:SIGXCPU", "signal:SIGKILL")
    assert result.exit_code is None


FORK_COUNT = """
import errno, json, os, signal
children, error = [], None
for _ in range(10_000):
    try:
        pid = os.fork()
    except OSError as exc:
        error = errno.errorcode[exc.errno]
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    children.append(pid)
print(json.dumps({"forked": len(children), "error": error}), flush=True)
"""


def test_process_limit_stops_forking(owned_sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("not root: RLIMIT_NPROC counts every process of the current user, not just the sandbox's")
    limits = SandboxLimits(timeout_s=30, cpu_s=30, memory_mb=512, max_procs=24)
    report = probes.report(owned_sandbox.run(workdir, probes.write(workdir, FORK_COUNT), limits))
    assert report["error"] == "EAGAIN"
    assert 0 < report["forked"] < limits.max_procs
    if owned_sandbox.uid is not None:  # the paused children went with the sandbox
        assert probes.pids_of_uid(owned_sandbox.uid) == set()


FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb_is_contained_and_reported(owned_sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    result = owned_sandbox.run(workdir, probes.write(workdir, FORK_BOMB), SHORT)
    assert result.killed == "timeout"
    assert result.exit_code is None
    if owned_sandbox.uid is not None:
        assert probes.pids_of_uid(owned_sandbox.uid) == set()
    # The host still starts processes.
    assert subprocess.run([sys.executable, "-c", "print('alive')"], capture_output=True, text=True).stdout == "alive\n"


BALLOON = """
import json, sys
try:
    blob = bytearray(int(sys.argv[1]) * 1024 * 1024)
    print(json.dumps({"allocated": len(blob)}))
except MemoryError:
    print(json.dumps({"allocated": 0}))
"""


def test_memory_balloon_fails_to_allocate(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, BALLOON) + ["1024"]
    inside = probes.report(sandbox.run(workdir, argv, SandboxLimits(timeout_s=30, memory_mb=256)))
    assert inside == {"allocated": 0}
    # The same allocation succeeds under a limit that allows it: the limit is what stopped it.
    roomy = probes.report(UnsandboxedRunner().run(workdir, argv, SandboxLimits(timeout_s=30, memory_mb=2048)))
    assert roomy == {"allocated": 1024 * 1024 * 1024}


def test_endless_output_is_cut_and_killed(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n    sys.stderr.write('e')\n")
    limits = SandboxLimits(timeout_s=30, max_output_bytes=100_000)
    result = sandbox.run(workdir, argv, limits)
    assert result.killed == "output"
    assert result.timed_out is False
    assert result.exit_code is None
    assert len(result.stdout) + len(result.stderr) <= limits.max_output_bytes
    assert set(result.stdout) == {"x"}


FILE_SIZE = """
import json
try:
    with open("big.bin", "wb") as fh:
        fh.write(b"0" * (3 * 1024 * 1024))
    print(json.dumps({"written": True}))
except OSError as exc:
    print(json.dumps({"written": False, "errno": exc.errno}))
"""


def test_file_size_limit(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    import errno

    report = probes.report(sandbox.run(workdir, probes.write(workdir, FILE_SIZE), SandboxLimits(file_size_mb=1)))
    assert report == {"written": False, "errno": errno.EFBIG}


def test_unsandboxed_runner_also_enforces_timeout(workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, "import os, time\nos.fork()\nwhile True:\n    time.sleep(0.05)\n")
    result = UnsandboxedRunner().run(workdir, argv, SandboxLimits(timeout_s=2))
    assert result.killed == "timeout" and result.timed_out is True and result.exit_code is None


# -- the unsandboxed runner: the same rlimits, applied by prlimit (util-linux) or the Python launcher


@pytest.fixture(params=["prlimit", "python"])
def unsandboxed(request: pytest.FixtureRequest) -> UnsandboxedRunner:
    runner = UnsandboxedRunner(use_prlimit=request.param == "prlimit")
    if request.param == "prlimit":
        assert runner.prlimit is not None, "prlimit (util-linux) is on every Debian system"
    else:
        assert runner.prlimit is None
    return runner


def test_unsandboxed_runner_applies_every_rlimit(unsandboxed: UnsandboxedRunner, workdir: Path) -> None:
    limits = SandboxLimits(timeout_s=30, cpu_s=7, memory_mb=300, file_size_mb=3, max_procs=50)
    script = "import resource as r\nfor n in ('CPU', 'AS', 'FSIZE', 'NPROC', 'CORE'):\n    print(n, *r.getrlimit(getattr(r, 'RLIMIT_' + n)))\n"
    (workdir / "show.py").write_text(script)
    result = unsandboxed.run(workdir, [sys.executable, "-I", "-S", "show.py"], limits)
    assert result.exit_code == 0, result.stderr
    seen = {line.split()[0]: tuple(int(x) for x in line.split()[1:]) for line in result.stdout.splitlines()}
    mib = 1024 * 1024
    assert seen == {"CPU": (7, 8), "AS": (300 * mib, 300 * mib), "FSIZE": (3 * mib, 3 * mib), "NPROC": (50, 50), "CORE": (0, 0)}


def test_unsandboxed_runner_stops_a_memory_balloon(unsandboxed: UnsandboxedRunner, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, BALLOON) + ["1024"]
    assert probes.report(unsandboxed.run(workdir, argv, SandboxLimits(timeout_s=30, memory_mb=256))) == {"allocated": 0}


def test_unsandboxed_runner_reports_a_missing_command_like_a_shell(unsandboxed: UnsandboxedRunner, workdir: Path) -> None:
    result = unsandboxed.run(workdir, [str(workdir / "no-such-command")], SandboxLimits(timeout_s=30))
    assert result.exit_code == 127 and "no-such-command" in result.stderr


def test_a_limit_prlimit_cannot_set_is_a_sandbox_failure_not_a_test_failure(workdir: Path) -> None:
    """prlimit exits 1 when a limit cannot be set, which a test command's own exit 1 must not be
    mistaken for: the runner raises SandboxUnavailable with prlimit's words."""
    from autopack.errors import SandboxUnavailable

    fake = workdir.parent / "prlimit"
    fake.write_text("#!/bin/sh\necho 'prlimit: failed to set the CPU time resource limit: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    runner = UnsandboxedRunner()
    runner.prlimit = str(fake)
    with pytest.raises(SandboxUnavailable, match="failed to set the CPU time"):
        runner.run(workdir, ["true"], SandboxLimits(timeout_s=30))
    # A command that fails on its own is a result, not a launch failure.
    assert UnsandboxedRunner().run(workdir, ["sh", "-c", "echo boom >&2; exit 1"], SandboxLimits(timeout_s=30)).exit_code == 1


def test_limits_above_this_processs_hard_limits_are_lowered_to_them() -> None:
    """A worker started with a CPU hard limit of 20 s (its child could not raise it) asks for no more."""
    import json
    import shutil

    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is on every Debian system"
    code = ("import json; from autopack.sandbox.limits import SandboxLimits; from autopack.sandbox.runner import clamped_rlimits; "
            "print(json.dumps([{n: [s, h] for n, s, h in clamped_rlimits(SandboxLimits(cpu_s=c))}['RLIMIT_CPU'] for c in (60, 10)]))")
    out = subprocess.run([prlimit, "--cpu=5:20", "--", sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[20, 20], [10, 11]]
