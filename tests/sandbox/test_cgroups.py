"""A cgroup per sandboxed run: finding the host's groups, making and removing a run's group, and
the caps holding for the whole run (several processes, the sandbox's /tmp) where the rlimits are
per process.

The tests that need real groups (``v1`` fixture) run where the worker can make cgroup v1 groups
(root on a v1 host, as on CI's machine); elsewhere they skip, and fail under
``AUTOPACK_REQUIRE_SERVICES=1``. The v2 tests use a folder of plain files to check what is written
where: this machine's v2 hierarchy has no controllers to enforce anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack.engine.services import make_sandbox
from autopack.errors import SandboxUnavailable
from autopack.sandbox import cgroups as cg
from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import BwrapSandbox, _result
from autopack.sandbox._process import ProcessOutcome
from autopack.settings import Settings

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:31 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:36 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP = """\
5:pids:/
4:memory:/docker/abc/worker
2:cpu,cpuacct:/x
0::/
"""


# --------------------------------------------------------------------------- parsing (pure)


def test_mountinfo_keeps_the_cgroup_mounts_with_their_root_and_controllers() -> None:
    mounts = cg.parse_mountinfo(MOUNTINFO)
    assert [(m.point, m.root, m.fstype) for m in mounts] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "/", "cgroup"),
        ("/sys/fs/cgroup/memory", "/docker/abc", "cgroup"),
        ("/sys/fs/cgroup/pids", "/", "cgroup"),
        ("/sys/fs/cgroup/my unified", "/", "cgroup2"),
    ]
    assert {"cpu", "cpuacct", "rw"} == mounts[0].options


def test_proc_cgroup_maps_each_controller_to_its_group() -> None:
    assert cg.parse_proc_cgroup(PROC_CGROUP) == {"pids": "/", "memory": "/docker/abc/worker", "cpu": "/x",
                                                 "cpuacct": "/x", "": "/"}


def test_v1_groups_resolve_a_group_under_a_mount_of_part_of_the_hierarchy() -> None:
    groups = cg.v1_groups(cg.parse_mountinfo(MOUNTINFO), cg.parse_proc_cgroup(PROC_CGROUP))
    assert groups == {"memory": Path("/sys/fs/cgroup/memory/worker"), "pids": Path("/sys/fs/cgroup/pids")}


def test_v1_groups_are_none_without_both_controllers_or_outside_the_mounted_part() -> None:
    mounts = cg.parse_mountinfo(MOUNTINFO)
    assert cg.v1_groups(mounts, {"memory": "/docker/abc"}) is None  # no pids membership
    assert cg.v1_groups([m for m in mounts if "pids" not in m.options], cg.parse_proc_cgroup(PROC_CGROUP)) is None
    assert cg.v1_groups(mounts, {"memory": "/docker/other", "pids": "/"}) is None
    assert cg.v1_groups(mounts, {"memory": "/docker/abcd", "pids": "/"}) is None  # a prefix, not a parent


def test_a_sigkill_is_called_memory_only_when_the_kernel_killed_at_the_cap() -> None:
    killed = ProcessOutcome(returncode=128 + 9, stdout=b"", stderr=b"", duration_s=1.0, killed=None)
    assert _result(killed, {}, bwrap_status=True).killed == "signal:SIGKILL"
    assert _result(killed, {}, bwrap_status=True, oom_kills=1).killed == "memory"
    failed = ProcessOutcome(returncode=1, stdout=b"", stderr=b"", duration_s=1.0, killed=None)
    result = _result(failed, {}, bwrap_status=True, oom_kills=2)  # a child died; the command went on
    assert (result.exit_code, result.killed, result.oom_kills) == (1, None, 2)


# --------------------------------------------------------------------------- cgroup v2 (file protocol)


def _fake_v2(folder: Path, controllers: str = "cpu memory pids", enabled: str = "") -> Path:
    folder.mkdir()
    (folder / "cgroup.controllers").write_text(controllers + "\n")
    (folder / "cgroup.subtree_control").write_text(enabled + "\n")
    return folder


def test_a_delegated_v2_folder_gets_its_controllers_enabled_and_a_run_group_its_caps(tmp_path: Path) -> None:
    folder = _fake_v2(tmp_path / "delegated")
    found = cg.detect(str(folder))
    assert found is not None and found.version == 2 and found.parents == (folder,)
    assert (folder / "cgroup.subtree_control").read_text() == "+memory +pids"
    group = found.create(300 * 1024 * 1024, 40)
    (d,) = group.dirs
    assert d.parent == folder and d.name.startswith(cg.PREFIX)
    assert (d / "memory.max").read_text() == str(300 * 1024 * 1024)
    assert (d / "pids.max").read_text() == "40"
    assert group.procs_files == [str(d / "cgroup.procs")]
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    assert group.oom_kills() == 2
    for name in os.listdir(d):  # plain files here; a real group's files go with the folder
        (d / name).unlink()
    assert group.close() and not d.exists()


@pytest.mark.parametrize("make, words", [
    (lambda p: p, "not a cgroup v2 folder"),
    (lambda p: _fake_v2(p, controllers="cpu io"), "lacks the memory and pids controller"),
])
def test_a_folder_that_cannot_hold_run_groups_stops_the_sandbox_with_the_reason(tmp_path: Path, make, words: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "cg"
    if make(folder) == folder and not folder.exists():
        folder.mkdir()
    with pytest.raises(SandboxUnavailable, match=words):
        cg.detect(str(folder))
    with pytest.raises(SandboxUnavailable, match="not a cgroup v2 folder"):
        cg.detect("relative/path")


def test_off_means_no_groups() -> None:
    assert cg.detect("off") is None
    assert BwrapSandbox(cgroup="off").cgroups is None


def test_the_workers_sandbox_takes_the_setting(tmp_path: Path, sandbox: BwrapSandbox) -> None:
    off = make_sandbox(Settings(state_dir=tmp_path / "state", sandbox_cgroup="off"))
    assert isinstance(off, BwrapSandbox) and off.cgroups is None
    not_a_group = tmp_path / "not-a-cgroup"
    not_a_group.mkdir()
    with pytest.raises(SandboxUnavailable, match="is not a cgroup v2 folder"):
        make_sandbox(Settings(state_dir=tmp_path / "state", sandbox_cgroup=str(not_a_group)))


# --------------------------------------------------------------------------- real cgroup v1 groups


@pytest.fixture(scope="module")
def v1() -> cg.Cgroups:
    found = cg.detect("auto")
    if found is None or found.version != 1:
        why = "this worker cannot make cgroup v1 groups (not root, or not a v1 host)"
        if os.environ.get("AUTOPACK_REQUIRE_SERVICES") == "1":
            pytest.fail(f"per-run cgroups required (AUTOPACK_REQUIRE_SERVICES=1): {why}")
        pytest.skip(why)
    return found


def _my_groups(found: cg.Cgroups) -> set[str]:
    mine = f"{cg.PREFIX}{cg.group_name().split('-')[2]}-{os.getpid()}-"
    return {name for p in found.parents for name in os.listdir(p) if name.startswith(mine)}


def test_a_run_group_has_the_caps_in_each_hierarchy_and_goes_when_closed(v1: cg.Cgroups) -> None:
    group = v1.create(123 * 1024 * 1024, 17)
    memory, pids = group.dirs
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(123 * 1024 * 1024)
    assert (pids / "pids.max").read_text().strip() == "17"
    if (memory / "memory.memsw.limit_in_bytes").exists():  # no swap to escape to
        assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(123 * 1024 * 1024)
    assert group.oom_kills() == 0 and group.pids() == []
    assert group.close()
    assert not memory.exists() and not pids.exists()


def test_closing_a_group_kills_what_is_still_in_it(v1: cg.Cgroups) -> None:
    group = v1.create(256 * 1024 * 1024, 16)
    join = "; ".join(f"open({f!r}, 'w').write(str(__import__('os').getpid()))" for f in group.procs_files)
    proc = subprocess.Popen([sys.executable, "-c", f"{join}; import time; time.sleep(60)"])
    try:
        for _ in range(500):
            if group.pids():
                break
            subprocess.run(["sleep", "0.01"])
        assert group.pids() == [proc.pid]
        assert group.close()
        assert proc.wait(timeout=10) == -9
        assert not any(d.exists() for d in group.dirs)
    finally:
        proc.kill()
        proc.wait()


def test_the_sweep_removes_the_groups_of_gone_workers_only(v1: cg.Cgroups) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    ns = cg.group_name().split("-")[2]
    stale = f"{cg.PREFIX}{ns}-{gone.pid}-deadbeef"
    foreign = f"{cg.PREFIX}1-{gone.pid}-deadbeef"  # another pid namespace: its pids mean nothing here
    mine = cg.group_name()
    for name in (stale, foreign, mine):
        for p in v1.parents:
            (p / name).mkdir()
    try:
        assert cg.detect("auto") is not None  # a worker starting sweeps
        for p in v1.parents:
            assert not (p / stale).exists()
            assert (p / foreign).is_dir() and (p / mine).is_dir()
    finally:
        for name in (stale, foreign, mine):
            for p in v1.parents:
                if (p / name).exists():
                    (p / name).rmdir()


# --------------------------------------------------------------------------- the caps hold in the sandbox

# Each of five processes keeps 100 MiB (written, so it is resident), under the per-process limit.
BALLOON = """\
import json, subprocess, sys
child = "import time; b = bytearray(100 << 20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); time.sleep(2)"
procs = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE) for _ in range(5)]
codes = [p.wait() for p in procs]
print(json.dumps({"codes": codes}))
"""


def test_several_processes_under_the_per_process_limit_are_capped_together(v1: cg.Cgroups, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, BALLOON)
    limits = SandboxLimits(timeout_s=60, memory_mb=256, total_memory_mb=300)
    capped = BwrapSandbox().run(workdir, argv, limits)
    codes = probes.report(capped)["codes"]
    assert -9 in codes and capped.oom_kills == codes.count(-9) >= 2  # the kernel killed children at the cap
    # Without the group, the rlimits let all five keep their 100 MiB: 500 MiB in a 300 MiB run.
    uncapped = BwrapSandbox(cgroup="off").run(workdir, argv, limits)
    assert probes.report(uncapped)["codes"] == [0] * 5 and uncapped.oom_kills == 0
    assert not _my_groups(v1)


def test_a_command_killed_at_the_cap_is_reported_as_memory(v1: cg.Cgroups, workdir: Path) -> None:
    # The sandbox's /tmp (sized at memory_mb) is memory too: filling it is charged to the run.
    # (files of 40 MB: each under the file size limit; 400 MB in all)
    fill = "for i in range(10): open(f'/tmp/fill{i}', 'wb').write(bytes(40_000_000))\nprint('filled')"
    argv = [sys.executable, "-c", fill]
    result = BwrapSandbox().run(workdir, argv, SandboxLimits(timeout_s=60, memory_mb=1024, total_memory_mb=200))
    assert (result.killed, result.exit_code) == ("memory", None) and result.oom_kills >= 1, result.stderr
    assert "filled" not in result.stdout
    assert not _my_groups(v1)
