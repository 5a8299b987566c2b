"""How fast ``gfprobe report --correlate --scsdc`` reads and analyses a large study.

Writes N run files (default 1,000) of S recorded steps (default 2,000) and L weight layers
(default 10) with the real writer, shaped like an SC-SDC study (configurations × densities ×
sparse/dense × seeds, with ``test_acc``/``test_loss`` metrics), then times the report command in
a fresh process, several times, and prints the median. The files are kept in ``--dir`` so later
runs skip writing them.

    .venv/bin/python benchmarks/report_scale.py                 # the target: <= 10 s on 2 cores
    .venv/bin/python benchmarks/report_scale.py --runs 100 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

# The fixtures' synthetic statistics (fixtures/ is a folder of scripts, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from make_runs import stats_block

TARGET_SECONDS = 10.0


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


def make_study(folder: Path, runs: int, steps: int, n_layers: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    grid = itertools.product(("sgd", "adam"), ("NR", "BN"), ("relu", "swish"), (0.1, 0.3, 0.5, 0.7, 0.9),
                             (True, False), range(1000))
    rng = np.random.default_rng(0)
    paths = []
    for optimizer, reg, act, density, sparse, seed in itertools.islice(
            sorted(grid, key=lambda g: (g[5], g[:5])), runs):
        attrs = {"optimizer": optimizer, "regularisation": reg, "activation": act, "sparse": sparse,
                 "density": density if sparse else 1.0, "pair_density": density, "width": 256 if sparse else 128,
                 "seed": seed, "dataset": "synthetic"}
        path = folder / f"{optimizer}-{reg}-{act}-d{density}-{'sparse' if sparse else 'dense'}-s{seed}.h5"
        if not path.exists():
            write_run(path, attrs, steps, n_layers, rng)
        paths.append(path)
    return paths


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
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("gfprobe-runs/report-scale"))
    args = parser.parse_args()
    folder = args.dir / f"{args.runs}x{args.steps}x{args.layers}"
    started = time.perf_counter()
    paths = make_study(folder, args.runs, args.steps, args.layers)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} run files of {args.steps} steps x {args.layers} weight layers in {folder} "
          f"({size / 2**20:,.0f} MiB; ready in {time.perf_counter() - started:.1f} s)")
    times = [time_report(folder, []) for _ in range(args.repeats)]
    median = statistics.median(times)
    print(f"gfprobe report --correlate test_acc --scsdc --format json: median {median:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in times)}) against a target of {TARGET_SECONDS:.0f} s: "
          f"{'PASS' if median <= TARGET_SECONDS else 'FAIL'}")
    return 0 if median <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
