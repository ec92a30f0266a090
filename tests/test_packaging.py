"""``pip install`` of a built wheel works: the manifest ships inside it, doctor verifies.

The wheel is built from a copy of the sources (not in the checkout, which other processes may
be using), installed without its dependencies into a fresh venv that borrows the test venv's
already installed libraries through a ``.pth`` line (nothing downloaded), and ``voice-agent
doctor`` runs from a folder outside the checkout, so only the installed package can answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFEST_IN_WHEEL = "voice_agent/data/manifest.toml"

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH, no inherited venv: what a user's shell would have.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copytree(REPO / "voice_agent", source / "voice_agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    out = tmp_path / "dist"
    done = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "-q", "-w", out, source, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    wheels = list(out.glob("voice_agent-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "fresh"
    done = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    done = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
               "--no-index", "-q", wheel, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).stdout.strip())
    # The test venv's libraries, appended after the fresh site-packages. A plain path line:
    # .pth files inside that folder (the checkout's editable install) are not processed.
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.timeout(600)
def test_wheel_installs_and_doctor_verifies_the_embedded_models(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert MANIFEST_IN_WHEEL in names, names
        assert b"[llm." in archive.read(MANIFEST_IN_WHEEL)
        assert not [n for n in names if n.startswith(("tests/", "models/"))], names

    venv = fresh_venv(tmp_path, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = run(venv / "bin" / "python", "-c",
                "import voice_agent.models as m; print(m.__file__); print(m.DEFAULT_MANIFEST)",
                cwd=outside)
    assert where.returncode == 0, where.stderr
    module, manifest = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(venv), f"imported from {module}, not the installed wheel"
    assert not module.is_relative_to(REPO)
    assert manifest.is_relative_to(venv) and manifest.is_file()

    doctor = run(venv / "bin" / "voice-agent", "doctor", cwd=outside)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    verified = [line for line in doctor.stdout.splitlines() if "ok (sha256 verified)" in line]
    assert {line.split()[0] for line in verified} == {"asr", "llm", "tts", "turn"}, doctor.stdout
