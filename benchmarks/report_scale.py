"""How fast ``gfprobe report --correlate --scsdc`` reads and analyses a large study.

Writes N run files of S recorded steps and L weight layers with the real writer (in worker
processes, one per core), shaped like an SC-SDC study (configurations × densities × sparse/dense ×
seeds, with ``test_acc``/``test_loss`` metrics), then times, each in a fresh process:

- **open**: merely opening and closing every file with h5py (``h5py.File(path, "r")``), one
  process: the machine's floor, so that the report's times can be compared across machines as
  ratios to it;
- **cold**: the report without a study index (deleted first): it reads every file, and writes
  the index;
- **warm**: the report again, ``--repeats`` times, with the index in place.

The files are kept in ``--dir`` so later runs skip writing them.

    .venv/bin/python benchmarks/report_scale.py                 # 1,000 runs x 2,000 steps x 10 layers: <= 10 s
    .venv/bin/python benchmarks/report_scale.py --study --dir /tmp/gfprobe-runs   # 50,000 x 50 x 4: <= 60 s
    .venv/bin/python benchmarks/report_scale.py --runs 100 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gfprobe.analysis.index import INDEX_NAME
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

# The fixtures' synthetic statistics (fixtures/ is a folder of scripts, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from make_runs import stats_block

TARGET_SECONDS = 10.0  # the default study, 1,000 runs x 2,000 steps x 10 layers
STUDY_TARGET_SECONDS = 60.0  # --study: 50,000 runs x 50 steps x 4 layers, with the index in place


def layers(n: int) -> list[ParamInfo]:
    params = []
    for i in range(n):
        params += [ParamInfo(f"fc{i}.weight", (64, 64), "weight", "Linear", "explicit"),
                   ParamInfo(f"fc{i}.bias", (64,), "bias", "Linear")]
    return params


def write_run(path: Path, attrs: dict[str, object], steps: int, n_layers: int, rng: np.random.Generator) -> None:
    params = layers(n_layers)
    density = float(attrs["density"])  # type: ignore[arg-type]
    scale = 0.05 * (1 + float(attrs["seed"]) / 10) * (1 + density)  # type: ignore[arg-type]
    block = stats_block(rng, steps, density, scale, params)
    writer = RunWriter(path, {"command": ["benchmark"]}, attrs)
    writer.add_stream("SGD", params)
    writer.append_steps(StepBlock(0, np.arange(steps), np.arange(steps) * 0.01, np.zeros(steps, np.uint8), block))
    acc = float(np.clip(0.5 + 0.3 * density + 0.1 * rng.standard_normal(), 0, 1))
    evals = [(name, s, s * 0.01, value) for s in (steps // 2, steps)
             for name, value in (("test_acc", acc), ("test_loss", 2 - acc))]
    writer.append_metrics(evals)
    writer.close("complete", {})


Spec = tuple[Path, dict[str, object], int, int, int]  # path, attributes, steps, layers, seed


def make_study(folder: Path, runs: int, steps: int, n_layers: int) -> list[Path]:
    """The study's run files, written where missing, by one worker process per core."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = sorted(itertools.product(("sgd", "adam"), ("NR", "BN"), ("relu", "swish"), (0.1, 0.3, 0.5, 0.7, 0.9),
                                        (True, False)))
    grid = ((*setting, seed) for seed in range(-(-runs // len(settings))) for setting in settings)
    specs: list[Spec] = []
    for i, (optimizer, reg, act, density, sparse, seed) in enumerate(itertools.islice(grid, runs)):
        attrs = {"optimizer": optimizer, "regularisation": reg, "activation": act, "sparse": sparse,
                 "density": density if sparse else 1.0, "pair_density": density, "width": 256 if sparse else 128,
                 "seed": seed, "dataset": "synthetic"}
        path = folder / f"{optimizer}-{reg}-{act}-d{density}-{'sparse' if sparse else 'dense'}-s{seed}.h5"
        specs.append((path, attrs, steps, n_layers, i))
    todo = [spec for spec in specs if not spec[0].exists()]
    if todo:
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
            pool.map(_write, todo, chunksize=64)
    return [spec[0] for spec in specs]


def _write(spec: Spec) -> None:
    # Written aside and moved in once closed: a run file appears under its name while it is
    # written (status "running"), and one left by a killed generation would stay so for good.
    path, attrs, steps, n_layers, seed = spec
    aside = path.parent.parent / f".{path.parent.name}.writing" / path.name  # outside the study's folder
    aside.unlink(missing_ok=True)
    write_run(aside, attrs, steps, n_layers, np.random.default_rng(seed))
    aside.replace(path)


def time_open(folder: Path) -> float:
    """Open and close every run file with h5py, in a fresh process: the floor of any report."""
    code = ("import sys, h5py, pathlib\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.h5')):\n"
            "    h5py.File(p, 'r').close()\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return time.perf_counter() - start


def time_report(folder: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "gfprobe", "report", str(folder), "--correlate", "test_acc", "--scsdc",
               "--format", "json", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"report failed: {done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--study", action="store_true",
                        help="the large study: 50,000 runs x 50 steps x 4 layers (target: 60 s warm)")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("gfprobe-runs/report-scale"))
    args = parser.parse_args()
    runs, steps, n_layers = (50_000, 50, 4) if args.study else (1000, 2000, 10)
    runs, steps, n_layers = args.runs or runs, args.steps or steps, args.layers or n_layers
    target = STUDY_TARGET_SECONDS if args.study else TARGET_SECONDS
    folder = args.dir / f"{runs}x{steps}x{n_layers}"
    started = time.perf_counter()
    paths = make_study(folder, runs, steps, n_layers)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths):,} run files of {steps} steps x {n_layers} weight layers in {folder} "
          f"({size / 2**20:,.0f} MiB; ready in {time.perf_counter() - started:.1f} s)")
    opened = time_open(folder)
    print(f"h5py open + close of every file: {opened:.2f} s")
    (folder / INDEX_NAME).unlink(missing_ok=True)
    cold = time_report(folder, [])
    index_size = (folder / INDEX_NAME).stat().st_size if (folder / INDEX_NAME).exists() else 0
    print(f"report, cold (no index; writes one of {index_size / 2**20:,.1f} MiB): {cold:.2f} s "
          f"= {cold / opened:.2f} x open")
    times = [time_report(folder, []) for _ in range(args.repeats)]
    median = statistics.median(times)
    print(f"report, warm (index in place): median {median:.2f} s = {median / opened:.2f} x open "
          f"(runs {', '.join(f'{t:.2f}' for t in times)})")
    print(f"gfprobe report --correlate test_acc --scsdc --format json, warm, against a target of {target:.0f} s: "
          f"{'PASS' if median <= target else 'FAIL'}")
    return 0 if median <= target else 1


if __name__ == "__main__":
    sys.exit(main())
