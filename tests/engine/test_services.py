"""Engine services built for a process that runs no tests: no bubblewrap check, and a sandbox that refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.engine.services import NoSandbox, build_services
from autopack.errors import SandboxUnavailable
from autopack.sandbox.limits import SandboxLimits
from autopack.settings import Settings


def test_services_without_a_sandbox_need_no_bubblewrap_and_refuse_to_run_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))  # a host without bubblewrap (or anything else)
    settings = Settings(state_dir=tmp_path / "state", profile="local", sandbox="bwrap")
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        build_services(settings)
    services = build_services(settings, sandbox=False)
    assert isinstance(services.sandbox, NoSandbox)
    with pytest.raises(SandboxUnavailable, match="runs no tests"):
        services.sandbox.run(tmp_path, ["true"], SandboxLimits())
