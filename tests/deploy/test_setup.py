"""scripts/setup.sh, the README's first command: safe to run again, also after it stopped half-way."""

from __future__ import annotations

from pathlib import Path


DEBIAN_PYTHON_WITHOUT_VENV = '''#!/bin/sh
# python3 on a fresh Debian/Ubuntu without the python3-venv package: `python3 -m venv DIR` lays DIR
# out (bin/python included), then fails in ensurepip with this message and status 1.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  {real} -m venv --without-pip "$3"
  echo "The virtual environment was not created successfully because ensurepip is not"
  echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv package"
  exit 1
fi
exec {real} "$@"
'''


def test_setup_sh_recovers_after_the_venv_package_is_installed(tmp_path: Path) -> None:
    """README: `bash scripts/setup.sh` sets up a fresh machine and is safe to run again. On a fresh
    Debian/Ubuntu the first run stops at `python3 -m venv` (python3-venv missing) and leaves
    .venv/bin/python behind; once the user installs python3-venv and runs it again, the venv is
    made again (before, the script saw .venv/bin/python and failed on `No module named pip` for good)."""
    import os
    import shutil
    import subprocess
    import sys

    from autopack.settings import ROOT

    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", clone / "scripts" / "setup.sh")
    (clone / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    real = Path(sys.base_prefix) / "bin" / "python3"
    fake = tmp_path / "python3-no-venv"
    fake.write_text(DEBIAN_PYTHON_WITHOUT_VENV.format(real=real))
    fake.chmod(0o755)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)

    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env={**env, "PYTHON": str(fake)},
                           capture_output=True, text=True, timeout=120)
    assert first.returncode != 0 and "python3-venv" in first.stdout + first.stderr  # as on a fresh machine
    # The user installs python3-venv and runs the README's command again.
    second = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env={**env, "PYTHON": str(real)},
                            capture_output=True, text=True, timeout=300)
    pip = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0, f"the second run left a venv without pip: {second.stderr.strip()[-300:]}"
