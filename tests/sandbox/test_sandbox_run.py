"""A normal run in the bubblewrap sandbox: pytest, JUnit read back, exit codes, env, collect."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autopack.sandbox.commands import pytest_argv, run_pytest
from autopack.sandbox.junit import parse_junit
from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import BwrapSandbox

pytestmark = pytest.mark.sandbox

LIMITS = SandboxLimits(timeout_s=60, cpu_s=60, memory_mb=1024)

TARGET_TESTS = '''
import pytest

def test_ok():
    assert 1 + 1 == 2

def test_bad():
    assert 1 + 1 == 3

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 1

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture fails")

def test_error(broken):
    pass

class TestGroup:
    def test_inside(self):
        assert True

    class TestNested:
        def test_deep(self):
            assert True
'''


def _target(workdir: Path) -> None:
    (workdir / "tests" / "unit").mkdir(parents=True)
    (workdir / "tests" / "unit" / "test_mod.py").write_text(TARGET_TESTS)


def test_pytest_in_sandbox_reports_every_outcome(sandbox: BwrapSandbox, workdir: Path) -> None:
    _target(workdir)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))

    run = run_pytest(sandbox, workdir, sys.executable, LIMITS)

    m = "tests/unit/test_mod.py"
    assert run.outcomes == {
        f"{m}::test_ok": "passed",
        f"{m}::test_bad": "failed",
        f"{m}::test_param[1]": "passed",
        f"{m}::test_param[2]": "failed",
        f"{m}::test_skipped": "skipped",
        f"{m}::test_error": "error",
        f"{m}::TestGroup::test_inside": "passed",
        f"{m}::TestGroup::TestNested::test_deep": "passed",
    }
    assert run.exit_code == 1  # pytest: some tests failed
    assert run.killed is None
    assert "test_bad" in run.output_tail
    # The run happened on a copy: no JUnit file, no cache, no bytecode in the original.
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_selection_runs_only_the_selected_tests(sandbox: BwrapSandbox, workdir: Path) -> None:
    _target(workdir)
    m = "tests/unit/test_mod.py"
    run = run_pytest(sandbox, workdir, sys.executable, LIMITS, selection=[f"{m}::test_ok", f"{m}::TestGroup"])
    assert run.outcomes == {
        f"{m}::test_ok": "passed",
        f"{m}::TestGroup::test_inside": "passed",
        f"{m}::TestGroup::TestNested::test_deep": "passed",
    }
    assert run.exit_code == 0


def test_sandbox_run_collects_the_junit_file(sandbox: BwrapSandbox, workdir: Path) -> None:
    _target(workdir)
    argv = pytest_argv(sys.executable, "out/junit.xml", ["tests/unit/test_mod.py::test_ok"])
    result = sandbox.run(workdir, argv, LIMITS, collect=["out/junit.xml", "out/absent.xml"])
    assert result.exit_code == 0, result.stderr
    assert set(result.files) == {"out/junit.xml"}
    assert parse_junit(result.files["out/junit.xml"]) == {"tests/unit/test_mod.py::test_ok": "passed"}


def test_exit_code_output_and_env(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(
        workdir,
        "import os, sys\n"
        "print('out:' + os.environ.get('GIVEN', '-'))\n"
        "print('cwd:' + os.getcwd(), 'home:' + os.environ['HOME'])\n"
        "sys.stderr.write('err-line\\n')\n"
        "sys.exit(3)\n",
    )
    result = sandbox.run(workdir, argv, LIMITS, env={"GIVEN": "value-42"})
    assert result.exit_code == 3
    assert result.killed is None and not result.timed_out
    assert "out:value-42" in result.stdout
    assert "cwd:/workspace home:/tmp" in result.stdout
    assert result.stderr == "err-line\n"


def test_missing_command_is_an_ordinary_failure(sandbox: BwrapSandbox, workdir: Path) -> None:
    result = sandbox.run(workdir, ["/no/such/program"], LIMITS)
    assert result.exit_code not in (0, None)
    assert "/no/such/program" in result.stderr


def test_collected_symlink_is_not_followed(sandbox: BwrapSandbox, workdir: Path, tmp_path: Path, probes) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "host-only.txt"
    secret.write_text("host secret")
    os.chmod(secret, 0o600)
    argv = probes.write(
        workdir,
        "import os\n"
        f"os.symlink({str(secret)!r}, 'result.xml')\n"
        "os.mkdir('d')\n"
        f"os.symlink({str(tmp_path)!r}, 'd/link')\n"
        "open('plain.txt', 'w').write('plain')\n"
        "print('{}')\n",
    )
    result = sandbox.run(workdir, argv, LIMITS, collect=["result.xml", "d/link/host-only.txt", "plain.txt"])
    assert result.exit_code == 0, result.stderr
    # The links point at a readable host file once back outside; they must not be read.
    assert result.files == {"plain.txt": "plain"}


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", ""])
def test_collect_paths_must_stay_in_the_workspace(sandbox: BwrapSandbox, workdir: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        sandbox.run(workdir, ["true"], LIMITS, collect=[bad])


def test_runs_as_an_unprivileged_uid_of_its_own(sandbox: BwrapSandbox, workdir: Path, probes) -> None:  # type: ignore[no-untyped-def]
    argv = probes.write(workdir, "import json, os\nprint(json.dumps({'uid': os.getuid(), 'owner': os.stat('.').st_uid}))\n")
    first = probes.report(sandbox.run(workdir, argv, LIMITS))
    second = probes.report(sandbox.run(workdir, argv, LIMITS))
    if os.geteuid() == 0:
        assert first["uid"] != 0 and second["uid"] != 0
        assert first["uid"] != second["uid"]  # a fresh uid per run
    else:
        assert first["uid"] == second["uid"] == os.getuid()
    assert first["owner"] == first["uid"]  # the copy belongs to the sandbox's uid


def test_python_installed_under_tmp_runs_inside(tmp_path: Path, workdir: Path) -> None:
    """A checkout (and its venv) under /tmp: the sandbox's own /tmp must not hide it."""
    import subprocess
    import sys as _sys

    from autopack.sandbox.limits import SandboxLimits

    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([_sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    box = BwrapSandbox(python_paths=[venv, _sys.base_prefix])
    res = box.run(workdir, [str(venv / "bin" / "python"), "-c", "import sys; print('prefix', sys.prefix)"], SandboxLimits(timeout_s=20))
    assert res.exit_code == 0, res.stderr
    assert f"prefix {venv}" in res.stdout


# A run that reports the inode of the file it sees and leaves a file of its own behind.
CONSUME_PROBE = ["sh", "-c", "stat -c %i data/file.txt > inode.txt; echo made > made.txt; cat data/file.txt"]


def _runners(request: pytest.FixtureRequest) -> list[tuple[str, object]]:
    from autopack.sandbox.runner import UnsandboxedRunner

    return [("none", UnsandboxedRunner()), ("bwrap", request.getfixturevalue("sandbox"))]


@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_a_consumed_workdir_is_moved_in_not_copied(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    runner = dict(_runners(request))[kind]
    src = tmp_path / "export"
    (src / "data").mkdir(parents=True)
    (src / "data" / "file.txt").write_text("exported\n")
    inode = os.stat(src / "data" / "file.txt").st_ino
    result = runner.run(src, CONSUME_PROBE, LIMITS, collect=["inode.txt"], consume=True)  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "exported\n"
    assert int(result.files["inode.txt"]) == inode  # the same file: renamed into the run, not written again
    assert not src.exists()  # handed over, and gone with the run
    # Without consume the folder is copied and stays as it was.
    src.mkdir()
    (src / "data").mkdir()
    (src / "data" / "file.txt").write_text("exported\n")
    inode = os.stat(src / "data" / "file.txt").st_ino
    result = runner.run(src, CONSUME_PROBE, LIMITS, collect=["inode.txt"])  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.stderr
    assert int(result.files["inode.txt"]) != inode
    assert sorted(p.name for p in src.rglob("*")) == ["data", "file.txt"]


def test_a_consumed_workdir_on_another_file_system_is_copied_then_removed(tmp_path: Path) -> None:
    import tempfile

    from autopack.sandbox.runner import UnsandboxedRunner

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.fail("this test needs /dev/shm on another file system than the temp dir (Debian mounts it as tmpfs)")
    src = Path(tempfile.mkdtemp(dir=shm, prefix="autopack-test-"))
    try:
        (src / "data").mkdir()
        (src / "data" / "file.txt").write_text("exported\n")
        result = UnsandboxedRunner().run(src, CONSUME_PROBE, LIMITS, collect=["made.txt"], consume=True)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "exported\n" and result.files["made.txt"] == "made\n"
        assert not src.exists()
    finally:
        if src.exists():
            import shutil

            shutil.rmtree(src)


def test_consume_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    from autopack.sandbox.runner import UnsandboxedRunner

    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    for bad in (link, tmp_path / "absent", tmp_path / "file"):
        if bad.name == "file":
            bad.write_text("x")
        with pytest.raises(NotADirectoryError):
            UnsandboxedRunner().run(bad, ["true"], LIMITS, consume=True)
    assert target.is_dir() and link.is_symlink()  # nothing moved


DEPTH = 1200  # deeper than Python's default recursion limit (1000)


def test_folders_nested_deeper_than_pythons_stack_are_run_and_removed(sandbox: BwrapSandbox, workdir: Path) -> None:
    """In the workspace handed in (a candidate's tree, given to the sandbox uid when root) and made
    by the command: the run is an ordinary one, and its folder is removed afterwards."""
    import tempfile
    import uuid

    import subprocess

    subprocess.run(["mkdir", "-p", "/".join(["d"] * DEPTH)], cwd=workdir, check=True)  # os.makedirs recurses
    marker = f"marker-{uuid.uuid4().hex}"
    script = f"touch {marker}; i=0; while [ $i -lt {DEPTH} ]; do mkdir -p e && cd e || exit 1; i=$((i+1)); done; echo made"
    result = sandbox.run(workdir, ["sh", "-c", script], LIMITS, consume=True)
    assert (result.exit_code, result.stdout.strip()) == (0, "made"), result.stderr
    assert list(Path(tempfile.gettempdir()).glob(f"autopack-sandbox-*/workspace/{marker}")) == []


def test_code_under_test_cannot_pass_for_a_sandbox_that_cannot_start(sandbox: BwrapSandbox, workdir: Path) -> None:
    """The launcher's failure words and exit code, printed by the command itself, are a failed run
    (a SandboxUnavailable would end the whole build run)."""
    from autopack.sandbox import _launch

    script = f"import os, sys; sys.stderr.write({_launch.PREFIX!r} + ' OSError: forged\\n'); sys.stderr.flush(); os._exit({_launch.LAUNCH_FAILED})"
    result = sandbox.run(workdir, [sys.executable, "-c", script], LIMITS)
    assert result.exit_code == _launch.LAUNCH_FAILED and "forged" in result.stderr


@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_a_result_file_the_workdir_already_holds_is_not_read_back(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A result must be the run's own: a report the commit carries is removed before the command
    runs, and a symlinked folder on its way is not followed (its host target stays)."""
    runner = dict(_runners(request))[kind]
    workdir = tmp_path / "work"
    (workdir / "out").mkdir(parents=True)
    (workdir / "out" / "junit.xml").write_text("<testsuites/>")
    (workdir / "report").mkdir()
    host = tmp_path / "host"
    host.mkdir()
    (host / "junit.xml").write_text("host file")
    (workdir / "linked").symlink_to(host)
    collect = ["out/junit.xml", "report", "linked/junit.xml"]
    result = runner.run(workdir, ["sh", "-c", "ls out report 2>&1; true"], LIMITS, collect=collect)  # type: ignore[attr-defined]
    assert result.exit_code == 0 and result.files == {}
    assert "junit.xml" not in result.stdout and "No such file" in result.stdout
    assert (host / "junit.xml").read_text() == "host file"
