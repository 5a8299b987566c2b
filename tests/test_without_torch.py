"""The analysis side where torch is not installed: ``pip install gfprobe`` without the ``torch``
extra. Each command runs in a Python whose ``import torch`` (and torchvision's) fails as it does
where neither is installed, so a command that needs them fails here too, not only one that
happens to leave them out of ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, child_env

RUNS = FIXTURES / "runs"
FILES = [str(RUNS / name) for name in ("dense.h5", "sparse.h5", "amp.h5")]
# What `pip install gfprobe` does not install: torch, the frameworks, and pandas (an extra too).
BLOCKED = ("torch", "torchvision", "lightning", "transformers", "jax", "pandas")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which ``import torch`` raises ModuleNotFoundError, as without torch."""
    folder = tmp_path_factory.mktemp("no-torch")
    for name in BLOCKED:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return child_env(PYTHONPATH=str(folder))


def gfprobe(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfprobe", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd)


def test_the_blocker_really_blocks(no_torch: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=no_torch)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


def test_report_works(no_torch: dict[str, str]) -> None:
    done = gfprobe(no_torch, "report", "--format", "json", *FILES)
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    assert len(runs) == 3 and all(run["measures"]["egf_2"] is not None for run in runs)
    done = gfprobe(no_torch, "report", "--format", "json", "--correlate", "test_acc", *FILES)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["correlation"]


def test_report_scsdc_works(no_torch: dict[str, str]) -> None:
    done = gfprobe(no_torch, "report", "--scsdc", *FILES)
    assert done.returncode == 0, done.stderr
    assert "SC-SDC" in done.stdout


def test_inspect_works(no_torch: dict[str, str]) -> None:
    done = gfprobe(no_torch, "inspect", "--format", "json", FILES[0])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["streams"]


def test_check_works(no_torch: dict[str, str], tmp_path: Path) -> None:
    done = gfprobe(no_torch, "check", "--junit", str(tmp_path / "junit.xml"), FILES[0])
    assert done.returncode in (0, 1), done.stderr  # 1: a rule failed, which is an answer too
    assert "nonfinite" in done.stdout and (tmp_path / "junit.xml").stat().st_size > 0


def test_plot_works(no_torch: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "scatter.png"
    done = gfprobe(no_torch, "plot", *FILES, "--kind", "measures", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plugins_lists_without_torch(no_torch: dict[str, str]) -> None:
    done = gfprobe(no_torch, "plugins", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "torch-masks" in {plugin["name"] for plugin in json.loads(done.stdout)}


def test_the_analysis_api_works(no_torch: dict[str, str]) -> None:
    code = ("import sys, gfprobe.api as gf; run = gf.load(sys.argv[1]); "
            "print(len(run.measures()['egf_2']), len(gf.summarize(sys.argv[1:])), len(gf.check(sys.argv[1:2])))\n"
            "try:\n    run.measures_frame()\nexcept gf.ConfigError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code, *FILES], capture_output=True, text=True, env=no_torch,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "40 3 1", "DataFrames need pandas, which is not installed: pip install 'gfprobe[dataframe]'"]


def test_scsdc_plan_works(no_torch: dict[str, str]) -> None:
    done = gfprobe(no_torch, "scsdc", "plan", "--sparse-width", "64", "--densities", "0.5")
    assert done.returncode == 0, done.stderr


def test_training_says_it_needs_the_torch_extra(no_torch: dict[str, str], tmp_path: Path) -> None:
    done = gfprobe(no_torch, "scsdc", "run", "--preset", "quick", "--out", str(tmp_path / "study"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gfprobe: training needs torch, which is not installed here; install it with: pip install 'gfprobe[torch]'"]
    assert not (tmp_path / "study").exists()
