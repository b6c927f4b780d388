"""The distribution as a user installs it: a wheel named for the package index (``sextant`` there
is an unrelated project), holding every data file the package reads, whose ``sextant`` command
runs the README's main job from a fresh virtual environment, away from the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the project (so that the build leaves the checkout as it was)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    (built,) = out.glob("*.whl")
    return built


def test_the_distribution_is_not_named_sextant(wheel):
    assert wheel.name.startswith("sextant_llm-")
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    assert "\nName: sextant-llm\n" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_the_wheel_holds_every_data_file_the_package_reads(wheel):
    packaged = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "sextant").rglob("*")
            if p.is_file() and p.suffix in (".yaml", ".json")]
    assert len(data) > 60  # the catalog, its model configs, the ledgers, the default scenario
    assert [name for name in data if name not in packaged] == []


def test_the_installed_wheel_runs_the_readme_main_command(wheel, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # The dependencies come from this interpreter's environment (a path file, no download); the
    # editable install there is not picked up: path files in an added directory are not read.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, text=True)
    where = subprocess.run([str(python), "-c", "import sextant; print(sextant.__file__)"], cwd=tmp_path, check=True,
                           capture_output=True, text=True).stdout
    assert Path(where.strip()).is_relative_to(env)
    run = subprocess.run([str(env / "bin" / "sextant"), "plan", "train"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "memory of the best: fits" in run.stdout
