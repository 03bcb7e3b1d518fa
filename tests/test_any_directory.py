"""Every command the READMEs document runs from any directory (not only the checkout's root)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def documented_modules() -> list[str]:
    mods = set()
    for readme in ROOT.glob("**/README.md"):
        if ".venv" in readme.parts:
            continue
        mods |= set(re.findall(r"python -m ([a-z_][a-z_.]*)", readme.read_text()))
    return sorted(m for m in mods if (ROOT / m.split(".")[0] / "__init__.py").is_file())  # ours, not pip's etc.


def test_every_package_is_installed():
    """`pip install .` ships every top-level package of the checkout (the experiments included)."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
    assert on_disk <= set(packages), on_disk - set(packages)
    assert {m.split(".")[0] for m in documented_modules()} <= set(packages)
    assert {"compare", "var", "flowar", "experiments"} <= {m.split(".")[0] for m in documented_modules()}


@pytest.mark.parametrize("module", documented_modules())
def test_documented_command_help_works_outside_the_checkout(module, tmp_path):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()
