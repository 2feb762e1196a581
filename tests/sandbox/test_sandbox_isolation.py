"""What the sandboxed code cannot do. Each check is also run without the sandbox
(``UnsandboxedRunner``, which isolates nothing) to show the probe would notice."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import BwrapSandbox, UnsandboxedRunner

pytestmark = pytest.mark.sandbox

LIMITS = SandboxLimits(timeout_s=30, cpu_s=30, memory_mb=1024)

CONNECT = """
import json, socket, sys
port = int(sys.argv[1])
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        print(json.dumps({"connected": True}))
except OSError as exc:
    print(json.dumps({"connected": False, "error": type(exc).__name__}))
"""


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel completes connections; no accept() needed
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_no_network_to_host_loopback(sandbox: BwrapSandbox, workdir: Path, listener: int, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, CONNECT) + [str(listener)]

    outside = probes.report(UnsandboxedRunner().run(workdir, argv, LIMITS))
    inside = probes.report(sandbox.run(workdir, argv, LIMITS))

    assert outside == {"connected": True}
    assert inside["connected"] is False
    assert inside["error"] == "ConnectionRefusedError"  # only a private, empty loopback exists


WRITE = """
import json, os, sys
results = {}
for target in sys.argv[1:]:
    try:
        with open(target, "w") as fh:
            fh.write("pwned")
        results[target] = "written"
    except OSError as exc:
        results[target] = type(exc).__name__
with open("probe.py", "a") as fh:  # the sandbox's own copy is writable
    fh.write("# changed in the sandbox\\n")
os.remove("keep.txt")
print(json.dumps(results))
"""


def test_cannot_write_outside_its_copy(sandbox: BwrapSandbox, workdir: Path, tmp_path: Path, probes) -> None:  # type: ignore[no-untyped-def]
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    os.chmod(host_dir, 0o777)  # even an unprivileged uid could write here, were it visible
    (workdir / "keep.txt").write_text("original")
    argv = probes.write(workdir, WRITE)
    original = {p.name: p.read_text() for p in workdir.iterdir()}
    targets = [str(host_dir / "pwned.txt"), str(workdir / "pwned.txt"), "/usr/pwned.txt", "/etc/pwned.txt"]

    inside = probes.report(sandbox.run(workdir, argv + targets, LIMITS))

    assert all(inside[t] != "written" for t in targets), inside
    assert list(host_dir.iterdir()) == []
    assert {p.name: p.read_text() for p in workdir.iterdir()} == original
    for system_path in ("/usr/pwned.txt", "/etc/pwned.txt"):
        assert not os.path.exists(system_path)

    control_dir = tmp_path / "control"
    control_dir.mkdir()
    outside = probes.report(UnsandboxedRunner().run(workdir, argv + [str(control_dir / "pwned.txt")], LIMITS))
    assert outside[str(control_dir / "pwned.txt")] == "written"
    assert (control_dir / "pwned.txt").read_text() == "pwned"
    assert {p.name: p.read_text() for p in workdir.iterdir()} == original  # unsandboxed also works on a copy


ENVIRON = """
import json, os, sys
secret = sys.argv[1].encode()
decoy = sys.argv[2]
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if secret in open(f"/proc/{pid}/environ", "rb").read():
                found.append(pid)
        except OSError:
            pass
try:
    open(f"/proc/{decoy}/environ", "rb").read()
    decoy_readable = True
except OSError:
    decoy_readable = False
try:
    pid1 = open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode()
except OSError:
    pid1 = None
print(json.dumps({
    "in_env": any(sys.argv[1] in v for v in os.environ.values()),
    "env_names": sorted(os.environ),
    "found_in_proc": found,
    "decoy_environ_readable": decoy_readable,
    "pid1": pid1,
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}))
"""


def test_only_the_workspace_tmp_and_shm_are_writable(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    """The sandbox's root and /dev are unsized tmpfs mounts (host memory): read-only, like the
    system; /tmp and /dev/shm are sized by the memory limit."""
    argv = probes.write(workdir, WRITE)
    (workdir / "keep.txt").write_text("x")
    inside = probes.report(sandbox.run(workdir, argv + ["/pwned.txt", "/dev/pwned", "/tmp/ok", "/dev/shm/ok", "/workspace/ok"], LIMITS))
    assert inside == {"/pwned.txt": "OSError", "/dev/pwned": "OSError", "/tmp/ok": "written", "/dev/shm/ok": "written",
                      "/workspace/ok": "written"}


def test_cannot_read_the_orchestrators_environment(
    sandbox: BwrapSandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch, probes  # type: ignore[no-untyped-def]
) -> None:
    secret = "sk-autopack-test-0123456789abcdef"
    monkeypatch.setenv("AUTOPACK_TEST_SECRET", secret)
    # A long-lived host process that carries the secret in its environment, like a worker would.
    decoy = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        argv = probes.write(workdir, ENVIRON) + [secret, str(decoy.pid)]
        outside = probes.report(UnsandboxedRunner().run(workdir, argv, LIMITS))
        inside = probes.report(sandbox.run(workdir, argv, LIMITS, env={"GIVEN": "x"}))
    finally:
        decoy.communicate(b"")

    assert str(decoy.pid) in outside["found_in_proc"] and outside["decoy_environ_readable"] is True

    assert inside["in_env"] is False
    assert "AUTOPACK_TEST_SECRET" not in inside["env_names"]
    assert set(inside["env_names"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "GIVEN", "PWD"}
    assert inside["found_in_proc"] == []
    assert inside["decoy_environ_readable"] is False
    # Its /proc is that of its own pid namespace: pid 1 is bubblewrap, not the host's init.
    host_pid1 = Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode()
    assert inside["pid1"] != host_pid1 and "bwrap" in inside["pid1"]
    assert len(inside["pids"]) < 10


VISIBLE = """
import json, os, sys
print(json.dumps({p: os.path.exists(p) for p in sys.argv[1:]}))
"""


def test_cannot_see_home_or_state_folder(sandbox: BwrapSandbox, workdir: Path, tmp_path: Path, probes) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    state.mkdir()
    (state / "autopack.db").write_text("runs")
    home = Path.home()
    bound = [Path(p) for p in sandbox.python_paths]
    # Entries of the host's home, except those on the way to a bound Python installation.
    home_entries = [p for p in home.iterdir() if not any(b == p or p in b.parents for b in bound)]
    cwd_entries = [p for p in Path.cwd().iterdir() if not any(b == p or p in b.parents for b in bound)]
    paths = [str(state / "autopack.db"), str(state), *map(str, home_entries), *map(str, cwd_entries)]
    assert home_entries and cwd_entries  # the test checks something

    argv = probes.write(workdir, VISIBLE)
    outside = probes.report(UnsandboxedRunner().run(workdir, argv + paths, LIMITS))
    inside = probes.report(sandbox.run(workdir, argv + paths, LIMITS))

    assert all(outside.values())
    assert {p for p, seen in inside.items() if seen} == set()
