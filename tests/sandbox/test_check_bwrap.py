"""check_bwrap: a working sandbox passes; a missing or broken bubblewrap names the fix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopack.errors import SandboxUnavailable
from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import BwrapSandbox, check_bwrap


@pytest.mark.sandbox
def test_check_passes_where_the_sandbox_works(sandbox: BwrapSandbox) -> None:
    check_bwrap()  # the fixture already skipped (or failed) if it does not


def test_missing_bwrap_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match=r"sudo apt-get install -y bubblewrap"):
        check_bwrap(str(tmp_path / "no-such-bwrap"))


def test_running_with_missing_bwrap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match=r"apt-get install -y bubblewrap"):
        BwrapSandbox(str(tmp_path / "no-such-bwrap")).run(tmp_path, ["true"], SandboxLimits())


@pytest.fixture
def broken_bwrap() -> Iterator[str]:
    """A 'bwrap' that fails like bubblewrap does without user namespaces.

    It lives in a world-readable folder so a dropped uid can execute it too.
    """
    folder = tempfile.mkdtemp(prefix="autopack-fake-bwrap-")
    os.chmod(folder, 0o755)
    fake = Path(folder) / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    try:
        yield str(fake)
    finally:
        shutil.rmtree(folder)


def test_bwrap_that_cannot_start_names_the_sysctl(broken_bwrap: str) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        check_bwrap(broken_bwrap)
    message = str(info.value)
    assert "user namespaces are disabled" in message
    assert "sudo sysctl -w" in message
    assert "No permissions to creating new namespace" in message  # what bwrap said is kept
