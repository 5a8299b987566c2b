"""Step-time overhead of ``gfprobe.watch`` on a small CPU training loop.

The loop is the one the project's overhead target is stated for: a 4x512 MLP on 784-wide
input (Linear 784->512, three Linear 512->512, ReLU between, Linear 512->10), batch 128,
Adam, a fixed thread count, recording every step. Three sides run the same loop in the same
process, each on its own copy of the model built from the same seed:

* ``plain``: no instrumentation;
* ``gfprobe``: ``gfprobe.watch(model, optimizer, out=..., every=N)``, one probe kept open
  across all its blocks (the run file grows as in real training) and closed at the end;
* ``lightning``: what Lightning's ``grad_norm`` logging does before each optimizer step,
  a per-parameter ``p.grad.norm(2)`` and a total norm, each copied to the host;
* ``plain-a/a``: a second plain copy, the A/A control: its ratio shows the noise floor.

Steps are timed in blocks; each round runs one block per side, and the order rotates from
round to round, so every side takes every position equally often. Each block starts with a few
untimed steps: interleaving evicts a side's state from the CPU caches, which training alone
would not do. The ratio of a side to ``plain`` is
taken per round; the median of the rounds is quoted with its min and max.

Run ``python benchmarks/overhead.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _interleave import (  # shared with peers.py
    BATCH,
    CLASSES,
    DEPTH,
    HIDDEN,
    IN_FEATURES,
    FlushClock,
    build_model,
    make_data,
    ratio_summary,
    settle,
    source_fingerprint,
    summary,
)
from torch import nn
from torch.nn import functional as F

import gfprobe

TARGET = 1.03  # the project's bar: recorded step time <= 1.03x plain
CONTROL_TOLERANCE = 0.01  # the A/A control's median ratio further than this from 1: too noisy to quote


def lightning_grad_norm(module: nn.Module, norm_type: float = 2.0) -> dict[str, float]:
    """Lightning's ``grad_norm`` (lightning.pytorch.utilities.grad_norm) followed by what its
    logger does with the result: every value becomes a Python float, one host copy each."""
    norms = {
        f"grad_{norm_type}_norm/{name}": p.grad.data.norm(norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    if norms:
        total = torch.tensor(list(norms.values())).norm(norm_type)
        norms[f"grad_{norm_type}_norm_total"] = total
    return {key: value.item() for key, value in norms.items()}


@dataclass
class Side:
    """One instrumented (or plain) copy of the training loop."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    before_step: Callable[[int], None] | None = None
    step: int = 0
    block_seconds: list[float] = field(default_factory=list)

    def run(self, data: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
        """Train ``steps`` steps; return the wall time they took."""
        model, optimizer, before_step = self.model, self.optimizer, self.before_step
        start = time.perf_counter()
        for _ in range(steps):
            x, y = data[self.step % len(data)]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if before_step is not None:
                before_step(self.step)
            optimizer.step()
            self.step += 1
        return time.perf_counter() - start


def make_side(name: str) -> Side:
    model = build_model()
    return Side(name, model, torch.optim.Adam(model.parameters(), lr=1e-3))


def rotated(sides: list[Side], round_index: int) -> list[Side]:
    """Round r starts with side r mod n: every side takes every position equally often and
    never follows itself, so no side is favoured by finding its state still in the CPU caches."""
    shift = round_index % len(sides)
    return sides[shift:] + sides[:shift]


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = make_data()

    plain = make_side("plain")
    recorded = make_side("gfprobe")
    sides = [plain, recorded]
    if not args.no_lightning:
        lightning = make_side("lightning")
        sink: list[dict[str, float]] = []  # the "logger": keeps what it was given

        def log_norms(step: int) -> None:
            if step % args.every == 0:
                sink.append(lightning_grad_norm(lightning.model))
                if len(sink) > 1000:
                    sink.clear()

        lightning.before_step = log_norms
        sides.append(lightning)
    if not args.no_control:
        sides.append(make_side("plain-a/a"))

    run_path = workdir / "overhead.h5"
    probe = gfprobe.watch(recorded.model, recorded.optimizer, out=run_path, every=args.every)
    clock = FlushClock(probe, enabled=args.flush_clock == "recorded")
    try:
        for side in sides:  # warm-up: allocator, Adam state, the probe's first step and file
            side.run(data, args.warmup)
        # Everything alive now survives the run: freeze it, so that a full collection inside a
        # timed block scans only what the blocks allocate, whichever side happens to trigger it.
        gc.collect()
        gc.freeze()
        clock.leave()
        for round_index in range(args.blocks):
            order = rotated(sides, round_index)
            for side in order:
                settle(args.settle)
                if side is recorded:
                    clock.enter()
                side.run(data, args.block_warmup)  # untimed: brings this side's state back into cache
                side.block_seconds.append(side.run(data, args.block_steps))
                if side is recorded:
                    clock.leave()
    finally:
        gc.unfreeze()
        path = probe.close()
    recorded_steps = sum(1 for s in range(recorded.step) if s % args.every == 0)
    file_bytes = path.stat().st_size if path is not None else 0

    # The file grows with the number of flushes (each rewrites a partly filled compressed chunk),
    # so the timed file depends on the flush clock. A run recorded back to back gives the size a
    # user sees; a one-step run gives the fixed part (metadata, parameter table).
    size = {"timed": (file_bytes, recorded_steps)}
    for label, steps in (("back_to_back", args.size_steps), ("one_step", 1)):
        if steps < 1:
            continue
        side = make_side(label)
        with gfprobe.watch(side.model, side.optimizer, out=workdir / f"{label}.h5",
                           every=1) as sized:
            side.run(data, steps)
        written = sized.path
        size[label] = (written.stat().st_size if written is not None else 0, steps)

    ms_per_step = {s.name: [1e3 * t / args.block_steps for t in s.block_seconds] for s in sides}
    results: dict[str, Any] = {
        "config": {
            "blocks": args.blocks, "block_steps": args.block_steps, "warmup": args.warmup,
            "threads": args.threads, "every": args.every, "settle": args.settle,
            "flush_clock": args.flush_clock, "batch": BATCH,
            "model": f"MLP {IN_FEATURES}->{HIDDEN}x{DEPTH}->{CLASSES}",
            "params": sum(p.numel() for p in plain.model.parameters()),
            "block_warmup": args.block_warmup,
            "order": "rotating: round r starts with side r mod " + str(len(sides)) + " of "
                     + ",".join(s.name for s in sides),
        },
        "environment": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "gfprobe": gfprobe.__version__, "gfprobe_source": source_fingerprint(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "ms_per_step": {name: summary(v) for name, v in ms_per_step.items()},
        "block_ms_per_step": ms_per_step,
        "ratios": {},
        "file": {
            label: {"bytes": n_bytes, "recorded_steps": steps,
                    "kib_per_1000_steps": 1000 * n_bytes / 1024 / max(steps, 1)}
            for label, (n_bytes, steps) in size.items()
        },
    }
    for side in sides[1:]:
        ratios = [r / p for r, p in zip(side.block_seconds, plain.block_seconds, strict=True)]
        results["ratios"][side.name] = ratio_summary(ratios)
    gf = results["ratios"]["gfprobe"]
    results["target"] = TARGET
    results["pass"] = gf["median"] <= TARGET
    control = results["ratios"].get("plain-a/a")
    results["noisy"] = control is not None and abs(control["median"] - 1) > CONTROL_TOLERANCE
    return results


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    ms = results["ms_per_step"]
    lines = [
        f"{cfg['model']} ({cfg['params']:,} params), batch {cfg['batch']}, Adam, "
        f"{cfg['threads']} threads, every={cfg['every']}",
        f"{cfg['blocks']} rounds x {cfg['block_steps']} steps per side, "
        f"warm-up {cfg['warmup']} steps (+{cfg['block_warmup']} untimed per block), {cfg['settle']} s settle, "
        f"flush clock {cfg['flush_clock']}; order rotates each round",
        f"gfprobe {results['environment']['gfprobe']} (source {results['environment']['gfprobe_source']}), "
        f"torch {results['environment']['torch']}",
        "",
        "ratio: median over rounds of (side's block time / plain's block time in the same round)",
        f"{'side':<12}{'ms/step':>9}{'ratio':>9}{'95% CI':>16}{'quartiles':>16}",
        f"{'plain':<12}{ms['plain']['median']:>9.2f}{'1.000':>9}",
    ]
    for name, r in results["ratios"].items():
        lines.append(f"{name:<12}{ms[name]['median']:>9.2f}{r['median']:>9.3f}"
                     f"{r['ci95'][0]:>9.3f}-{r['ci95'][1]:.3f}{r['q1']:>9.3f}-{r['q3']:.3f}")
    files = results["file"]
    lines.append("")
    for label, title in (("timed", "timed run (interleaved)"),
                         ("back_to_back", "back-to-back run")):
        if label in files:
            f = files[label]
            lines.append(f"run file, {title}: {f['bytes'] / 1024:,.1f} KiB for "
                         f"{f['recorded_steps']:,} recorded steps = "
                         f"{f['kib_per_1000_steps']:,.1f} KiB per 1,000 steps")
    if "one_step" in files:
        lines.append(f"  (of which fixed: {files['one_step']['bytes'] / 1024:.1f} KiB, "
                     "a one-step run)")
    lines += [
        "",
        f"gfprobe median {results['ratios']['gfprobe']['median']:.3f} vs target "
        f"{results['target']:.2f}: {'PASS' if results['pass'] else 'FAIL'}",
    ]
    if results["noisy"]:
        lines.append(f"WARNING: the A/A control is off 1 by more than {CONTROL_TOLERANCE:.2f}: "
                     "the machine was noisy, run again before quoting these figures")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=150,
                        help="timed rounds; each runs one block per side (default 150, >= 9)")
    parser.add_argument("--block-steps", type=int, default=10,
                        help="timed training steps per block (default 10: short blocks keep both "
                             "sides of a round in the same state of a drifting machine)")
    parser.add_argument("--block-warmup", type=int, default=2,
                        help="untimed steps at the start of each block, so the block before (another "
                             "side's) does not leave this side cold caches (default 2)")
    parser.add_argument("--warmup", type=int, default=30,
                        help="untimed steps per side before the first block (default 30)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads (default 2)")
    parser.add_argument("--every", type=int, default=1,
                        help="record every N-th step, gfprobe and Lightning-style (default 1)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="untimed pause in seconds before each block (default 0)")
    parser.add_argument("--size-steps", type=int, default=1000,
                        help="steps of the back-to-back run whose file size is reported "
                             "(default 1000; 0 skips it)")
    parser.add_argument("--flush-clock", choices=("recorded", "wall"), default="recorded",
                        help="'recorded' (default): the probe's flush timer runs only during "
                             "the recorded side's blocks, as in a loop trained alone; 'wall': "
                             "leave it on wall time (flushes several times more often per step)")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the A/A control side (a second plain copy)")
    parser.add_argument("--no-lightning", action="store_true",
                        help="skip the Lightning-style comparison side")
    parser.add_argument("--out-json", type=Path, default=None,
                        help="also write every block timing and the summary to this JSON file")
    args = parser.parse_args(argv)
    for name in ("blocks", "block_steps", "warmup", "threads", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1: {getattr(args, name)}")
    if args.block_warmup < 0:
        parser.error(f"--block-warmup must not be negative: {args.block_warmup}")
    if args.size_steps < 0:
        parser.error(f"--size-steps must not be negative: {args.size_steps}")
    if args.settle < 0:
        parser.error(f"--settle must not be negative: {args.settle}")
    if args.blocks < 9:
        parser.error(f"--blocks must be at least 9 for a meaningful median: {args.blocks}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gfprobe-bench-") as tmp:
        results = run_benchmark(args, Path(tmp))
    print(render(results))
    if args.out_json is not None:
        args.out_json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
