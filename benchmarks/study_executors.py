"""The same study with the local executor and with Ray: wall time, and whether the results agree.

Trains a study (default: the quick preset, 72 runs) into a fresh folder per executor and round,
the executors in a random order each round, one torch thread per run and as many runs at once as
the machine has cores, then compares every run file's recorded statistics and metrics with the
local executor's and the two SC-SDC reports (``gfprobe report --scsdc --format json``).

    .venv/bin/python benchmarks/study_executors.py                   # quick preset, 1 round
    .venv/bin/python benchmarks/study_executors.py --rounds 3 --config studies/mine.toml
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gfprobe.store.reader import open_run

EXECUTORS = {"local": ["--jobs", str(os.cpu_count() or 1)], "ray": ["--executor", "ray"]}


def train(study: list[str], executor: str, out: Path) -> float:
    command = [sys.executable, "-m", "gfprobe", "scsdc", "run", *study, "--out", str(out), "--no-report",
               "--cpus-per-run", "1", *EXECUTORS[executor]]
    started = time.perf_counter()
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{executor}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return seconds


def recorded(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with open_run(path) as run:
        return dict(run.stream(0).stats), {name: m.values for name, m in run.metrics().items()}


def same_files(a: Path, b: Path) -> tuple[int, int]:
    """(runs whose statistics and metrics are identical, runs compared)."""
    names = sorted(p.name for p in (a / "runs").glob("*.h5"))
    assert names == sorted(p.name for p in (b / "runs").glob("*.h5")), "different run files"
    equal = 0
    for name in names:
        (stats_a, metrics_a), (stats_b, metrics_b) = recorded(a / "runs" / name), recorded(b / "runs" / name)
        equal += all(np.array_equal(stats_a[k], stats_b[k]) for k in stats_a) and all(
            np.array_equal(metrics_a[k], metrics_b[k]) for k in metrics_a)
    return equal, len(names)


def scsdc_report(folder: Path) -> object:
    done = subprocess.run([sys.executable, "-m", "gfprobe", "report", str(folder / "runs"), "--scsdc", "--no-runs",
                           "--format", "json"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["scsdc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--config", type=Path, help="a study file instead of --preset")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    study = ["--config", str(args.config)] if args.config else ["--preset", args.preset]
    times: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    with tempfile.TemporaryDirectory(prefix="gfprobe-executors-") as scratch:
        for round_ in range(args.rounds):
            order = random.sample(list(EXECUTORS), len(EXECUTORS))
            for executor in order:
                out = Path(scratch) / f"{executor}-{round_}"
                times[executor].append(train(study, executor, out))
                print(f"round {round_ + 1}: {executor} {times[executor][-1]:.1f} s", flush=True)
        last = args.rounds - 1
        local, ray = Path(scratch) / f"local-{last}", Path(scratch) / f"ray-{last}"
        equal, total = same_files(local, ray)
        reports_equal = scsdc_report(local) == scsdc_report(ray)
        for folder in Path(scratch).iterdir():
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nstudy: {' '.join(study)}; {os.cpu_count()} cores; median of {args.rounds} round(s)")
    for executor, seconds in times.items():
        print(f"  {executor:6s} {statistics.median(seconds):7.1f} s  ({', '.join(f'{s:.1f}' for s in seconds)})")
    print(f"  ray / local: {statistics.median(times['ray']) / statistics.median(times['local']):.3f}")
    print(f"  run files with identical statistics and metrics: {equal} of {total}")
    print(f"  SC-SDC report identical: {reports_equal}")


if __name__ == "__main__":
    main()
