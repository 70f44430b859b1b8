"""A real install: the wheel, installed with --no-deps into a fresh virtualenv that sees the
project's dependencies, trains from another directory with a shipped preset."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_presets_and_trains_from_elsewhere(tmp_path):
    # Built from a copy: setuptools builds in the source tree, and a stale build/ there could
    # smuggle files into the wheel that the repository no longer has.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   cwd=tmp_path)
    wheel = next(wheels.glob("tfmeta-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # The fresh environment sees this one's dependencies, not its editable tfmeta.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    python = str(venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import tfmeta, sys; print(tfmeta.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(site) in where, where      # the installed wheel, not the repository
    tfmeta = str(venv / "bin" / "tfmeta")
    version = subprocess.run([tfmeta, "--version"], cwd=work, capture_output=True, text=True,
                             check=True).stdout
    import tfmeta as repo
    assert repo.__version__ in version
    presets = subprocess.run(
        [python, "-c", "from tfmeta import config; print(' '.join(config.preset_names()))"],
        cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(presets) == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    run = subprocess.run([tfmeta, "train", "--config", "sine-cpu", "--epochs", "1",
                          "--iterations", "3", "--set", "train.eval_tasks=10",
                          "--landscape-every", "0", "--run-dir", "run", "--no-progress"],
                         cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "run" / "history.jsonl").is_file()
