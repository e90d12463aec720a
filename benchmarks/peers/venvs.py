"""One virtualenv per third-party peer, created from PyPI with the pinned requirements beside this file.

The venvs live in ``benchmarks/peers/.venvs/<peer>`` (ignored by git) and are
reused while their requirements file is unchanged (a hash of it is stamped in
the venv). The project's own venv is never touched: AetherGraph and the
asyncio baseline run on the interpreter running the benchmark.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
VENVS = HERE / ".venvs"
STAMP = ".requirements.sha256"


def requirements_file(name: str) -> Path:
    return REQUIREMENTS / f"{name}.txt"


def pinned_versions(name: str) -> dict[str, str]:
    """``{distribution: version}`` from a peer's requirements file."""
    out = {}
    for line in requirements_file(name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            dist, version = line.split("==", 1)
            out[dist.strip().lower()] = version.strip()
    return out


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_venv(name: str, say: Callable[[str], None] = print) -> Path:
    """The python of the peer's venv, created (or re-created when its requirements changed) first."""
    req = requirements_file(name)
    target = VENVS / name
    python = venv_python(name)
    stamp = target / STAMP
    wanted = _digest(req)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    say(f"creating the {name} venv in {target.relative_to(HERE.parent.parent)} from {req.name} (PyPI)")
    shutil.rmtree(target, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(target)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(req)],
        check=True,
    )
    stamp.write_text(wanted + "\n")
    return python
