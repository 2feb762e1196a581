"""The sandbox's run folder in the system's temp folder: removed whatever the tests did to it,
private to the worker's and the sandbox's users, and nothing outside it is touched while it is
removed. A folder called ``systmp`` stands for the system's temp folder (world-writable, sticky).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from autopack.sandbox import _workspace
from autopack.sandbox._workspace import make_run_dir, remove_run_dir, take_workspace
from autopack.workspace import worktree as wt


def _systmp(tmp_path: Path) -> Path:
    """A folder with the system temp folder's mode (world-writable, sticky)."""
    d = tmp_path / "systmp"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# ------------------------------------------------------------------------------------------------
# Removing the run folder never changes the folder above it (it chmodded the system temp folder).


def test_removing_a_run_folder_that_is_already_gone_leaves_the_temp_folder_mode_alone(tmp_path: Path) -> None:
    """Two cleanups (beat's and ``autopack cleanup``, or two maintenance workers) racing on one left-over
    folder: the second finds it gone. Its error handler then runs ``chmod 0700`` on the folder's
    parent, i.e. on the system temp folder: /tmp loses its sticky bit and every other user's access."""
    systmp = _systmp(tmp_path)
    remove_run_dir(systmp / "autopack-sandbox-already-removed")
    assert _mode(systmp) == 0o1777


def test_a_run_folder_that_cannot_be_removed_does_not_change_the_temp_folder_mode(tmp_path: Path) -> None:
    """The same handler runs when the run folder's final rmdir fails for any reason (here: replaced by a
    symlink between the listing and the removal, which rmtree refuses): the parent is chmodded."""
    systmp = _systmp(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = systmp / "autopack-sandbox-swapped"
    link.symlink_to(target)
    before = _mode(target)
    remove_run_dir(link)
    assert _mode(systmp) == 0o1777
    assert target.is_dir() and _mode(target) == before


# ------------------------------------------------------------------------------------------------
# The candidate's files are not readable by other local users (they were, under a fixed name).


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    (repo / "private.py").write_text("API_TOKEN = 'the users private code'\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True, env=env)
    return repo


def test_the_candidate_in_the_temp_folder_is_not_readable_by_other_local_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``_run_tests`` and ``BwrapSandbox.run`` do: export the commit into a private (0700) temp folder,
    then make the run folder (``make_run_dir``: mode 0711) and move the export in (``take_workspace``).
    The copy keeps the export's 0755/0644 modes under the fixed name ``workspace``: any local user who
    lists /tmp can read the user's repository at ``/tmp/autopack-sandbox-*/workspace/...`` while the
    tests run (and until cleanup, when a worker was killed)."""
    systmp = _systmp(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    repo = _repo(tmp_path)
    owner = (2_100_000_000 + os.getpid() % 1_000_000,) * 2 if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="autopack-tree-") as tmp:
        tree = wt.export_tree(repo, "HEAD", Path(tmp) / "tree")
        base = make_run_dir()
        try:
            workspace = take_workspace(tree, base, owner)
            modes = {"base": _mode(base), "workspace": _mode(workspace), "file": _mode(workspace / "private.py")}
        finally:
            remove_run_dir(base)
    others_can_reach = bool(modes["base"] & 0o001) and (modes["workspace"] & 0o005) == 0o005
    assert not (others_can_reach and modes["file"] & 0o004), f"world-readable candidate: {modes}"


# ------------------------------------------------------------------------------------------------
# A non-root worker (the sandbox runs as its uid) removes a run folder in which the code under test
# made a folder unreadable (mode 000): the error handler called ``os.open(path)`` without flags, a
# TypeError escaped remove_run_dir (out of BwrapSandbox.run's ``finally``, and out of
# remove_stale_temp), and the folder stayed.

_REMOVE_AS_USER = """
import os
from pathlib import Path
ns = {"__name__": "ws"}
with open("ws.py") as fh:
    exec(compile(fh.read(), "ws.py", "exec"), ns)
ns["remove_run_dir"](Path("run"))
print("left" if os.path.lexists("run") else "gone")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as an unprivileged worker uid")
def test_a_folder_the_tests_made_unreadable_does_not_keep_the_run_folder(tmp_path: Path) -> None:
    """What the tests may do to their copy (``chmod 000 some_dir``, as a test of permission errors
    does) must not leave the run folder behind on a worker that is not root: README says the run
    folder is removed "even if the sandboxed code removed permissions inside it". Run as an
    unprivileged uid owning the folders, like a non-root worker and its sandbox."""
    uid = 2_100_000_000 + os.getpid() % 1_000_000
    area = tmp_path / "area"
    locked = area / "run" / "workspace" / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f.txt").write_text("x")
    for p in (area, area / "run", area / "run" / "workspace", locked, locked / "inner", locked / "inner" / "f.txt"):
        os.lchown(p, uid, uid)
    os.chmod(locked, 0)

    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    # The module under test (standard library only) is copied next to the folder: the worker's own
    # interpreter and checkout may not be reachable by the unprivileged uid.
    shutil.copy(_workspace.__file__, area / "ws.py")
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the unprivileged uid")
    out = subprocess.run(
        [python, "-I", "-c", _REMOVE_AS_USER], cwd=area, preexec_fn=drop, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(area)}, timeout=60,
    )
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "gone"
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(area)], check=False)
