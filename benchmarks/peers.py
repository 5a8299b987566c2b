"""gfprobe against the real peer packages, side by side, on three CPU training loops.

Workloads (each in a process of its own, Adam, a fixed thread count, denormals flushed on every
side alike):

* ``mlp``: the 4x512 MLP of overhead.py (784->512, three 512->512, 512->10), batch 128;
* ``cnn``: a CIFAR-shaped 3-conv CNN (3x32x32 input, 32/64/64 channels, 10 classes), batch 32;
* ``gpt``: a 4-layer GPT from plain torch.nn (d=128, 4 heads, vocabulary 256), 16x64 tokens.

Sides, each on its own copy of the model built from the same seed, all in the same process:

* ``plain``: no instrumentation (the reference of every ratio);
* ``gfprobe``: ``gfprobe.watch(model, optimizer, out=..., every=N)``;
* ``lightning``: Lightning's real ``grad_norm`` and the host copy of every value that its
  ``log_dict`` makes, on the recorded steps;
* ``wandb``: ``run.watch(model, log="gradients", log_freq=N)`` offline, committed by a
  ``run.log`` on the recorded steps;
* ``tensorboard``: ``SummaryWriter.add_histogram`` of every parameter's gradient on the
  recorded steps;
* ``cockpit``: Cockpit's ``economy`` configuration through BackPACK (extended model and loss,
  per-sample losses), tracking on the recorded steps; MLP and CNN only (BackPACK cannot extend
  the GPT's attention). It is 2 to 3 orders of magnitude slower on CPU and holds gigabytes, so
  it runs in ``--slow-rounds`` rounds of its own after the others', paired with plain, in short
  blocks (2 steps, or ``every`` steps so that each block holds one tracked step);
* ``plain-a/a``: a second plain copy, the A/A control: its ratio shows the bias of the set-up.

The method: after a warm-up, each round runs one block per side (untimed warm-up steps, then
timed steps, as overhead.py), in an order shuffled per round with a seeded RNG, so that a
peer's background work (wandb's service process, a writer thread) taxes a random neighbour
instead of always the same one. A side's ratio is its block time over plain's in the same
round; the figure is the median over rounds with a bootstrap 95% interval.

gfprobe's own cost is also measured directly, far less noisy than a ratio on a shared machine:
the wall time inside the probe's ``_record`` (the per-step hook: statistics and bookkeeping) per
step, and the CPU time of the writer thread (``Recorder._handle``) per step. Peak RSS of every
side is measured in a child process of its own that trains that side alone, against a plain
child; the bytes gfprobe's batch buffers hold are computed from the rows kept before a hand-over.

Run ``python benchmarks/peers.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _interleave import SEED, FlushClock, ratio_summary, source_fingerprint, summary
from _interleave import build_model as build_mlp
from _interleave import make_data as make_mlp_data
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]
ALL_SIDES = ("plain", "gfprobe", "lightning", "wandb", "tensorboard", "cockpit", "plain-a/a")
WORKLOADS = ("mlp", "cnn", "gpt")
SLOW_SIDES = ("cockpit",)  # timed in rounds of their own against plain (--slow-rounds)
COCKPIT_WORKLOADS = ("mlp", "cnn")  # BackPACK extends Linear/Conv2d/pooling, not attention
CONTROL_TOLERANCE = 0.02  # A/A control off 1 by more than this: a noisy run, say so
N_BATCHES = 8


# -- workloads --------------------------------------------------------------------------------
def build_cnn(seed: int = SEED) -> nn.Sequential:
    """A CIFAR-shaped CNN: three 3x3 conv layers (32, 64, 64 channels), each ReLU + 2x2 pooling."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    )


def make_cnn_data(seed: int = SEED, batch: int = 32) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed + 1)
    return [(torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(N_BATCHES)]


class TinyGPT(nn.Module):
    """A decoder-only transformer from plain torch.nn: token and position embeddings, pre-norm
    causal self-attention blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab: int = 256, d: int = 128, layers: int = 4, heads: int = 4, seq: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def build_gpt(seed: int = SEED) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT()


def make_gpt_data(seed: int = SEED, batch: int = 16, seq: int = 64, vocab: int = 256) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = [torch.randint(0, vocab, (batch, seq + 1), generator=gen) for _ in range(N_BATCHES)]
    return [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    build: Callable[[int], nn.Module]
    data: Callable[[int], list[Batch]]
    loss: Callable[..., torch.Tensor]


def workload(name: str) -> Workload:
    if name == "mlp":
        return Workload("mlp", "4x512 MLP, batch 128", build_mlp, make_mlp_data, F.cross_entropy)
    if name == "cnn":
        return Workload("cnn", "3-conv CNN, 3x32x32, batch 32", build_cnn, make_cnn_data, F.cross_entropy)
    if name == "gpt":
        return Workload("gpt", "4-layer GPT, d=128, 16x64 tokens", build_gpt, make_gpt_data, lm_loss)
    raise ValueError(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}")


# -- sides ------------------------------------------------------------------------------------
@dataclass
class Side:
    """One copy of the training loop, plain or observed by one tool."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[..., torch.Tensor]
    before_step: Callable[[int], None] | None = None
    train_step: Callable[[Side, Batch], None] | None = None  # replaces the plain step (Cockpit)
    finish: Callable[[], None] | None = None
    step: int = 0
    seconds: dict[int, float] = field(default_factory=dict)  # round -> seconds per timed step

    def run(self, data: list[Batch], steps: int) -> float:
        """Train ``steps`` steps; return the wall time they took."""
        start = time.perf_counter()
        for _ in range(steps):
            batch = data[self.step % len(data)]
            if self.train_step is not None:
                self.train_step(self, batch)
            else:
                self.plain_step(batch)
            self.step += 1
        return time.perf_counter() - start

    def plain_step(self, batch: Batch) -> None:
        x, y = batch
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(x), y).backward()
        if self.before_step is not None:
            self.before_step(self.step)
        self.optimizer.step()


class ProbeTimer:
    """Times gfprobe from inside, on this probe only: wall time in ``Probe._record`` (the step
    hook, on the training thread) and CPU time of ``Recorder._handle`` (on the writer thread)."""

    def __init__(self, probe: Any) -> None:
        self.record_ns = 0
        self.writer_s = 0.0
        self.writer_items = 0
        record, handle = probe._record, probe._recorder._handle

        def timed_record(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return record(*args, **kwargs)
            finally:
                self.record_ns += time.perf_counter_ns() - start

        def timed_handle(item: tuple[Any, ...], *args: Any) -> Any:
            start = time.thread_time()
            try:
                return handle(item, *args)
            finally:
                if item[0] != "close":  # finalising the file is once per run, not per step
                    self.writer_s += time.thread_time() - start
                    self.writer_items += 1

        probe._record = timed_record
        probe._recorder._handle = timed_handle

    def reset(self) -> None:
        self.record_ns, self.writer_s, self.writer_items = 0, 0.0, 0


def _plain(name: str, wl: Workload) -> Side:
    model = wl.build(SEED)
    return Side(name, model, torch.optim.Adam(model.parameters(), lr=1e-3), wl.loss)


def _gfprobe(side: Side, every: int, tmp: Path, ctx: dict[str, Any]) -> None:
    import gfprobe

    probe = gfprobe.watch(side.model, side.optimizer, out=tmp / "gfprobe.h5", every=every)
    ctx["probe"], ctx["timer"] = probe, ProbeTimer(probe)

    def finish() -> None:
        path = probe.close()
        ctx["file_bytes"] = path.stat().st_size if path is not None else 0

    side.finish = finish


def _lightning(side: Side, every: int) -> None:
    from lightning.pytorch.utilities import grad_norm

    sink: list[dict[str, float]] = []  # the logger: keeps what it was given

    def log_norms(step: int) -> None:
        if step % every == 0:
            # what LightningModule.log_dict does with tensor values: one host copy each
            sink.append({key: value.item() for key, value in grad_norm(side.model, norm_type=2).items()})
            if len(sink) > 1000:
                sink.clear()

    side.before_step = log_norms


def _wandb(side: Side, every: int, tmp: Path) -> None:
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp), project="gfprobe-peers",
                     settings=wandb.Settings(silent=True, console="off"))
    run.watch(side.model, log="gradients", log_freq=every)

    def commit(step: int) -> None:
        if step % every == 0:  # the histograms the hooks made wait for the next commit
            run.log({"step": step}, step=step)

    side.before_step = commit
    side.finish = lambda: run.finish()


def _tensorboard(side: Side, every: int, tmp: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp / "tensorboard"))
    named = list(side.model.named_parameters())

    def histograms(step: int) -> None:
        if step % every == 0:
            for name, p in named:
                if p.grad is not None:
                    writer.add_histogram(f"grad/{name}", p.grad, step)

    side.before_step = histograms
    side.finish = writer.close


def _cockpit(side: Side, every: int, wl: Workload) -> None:
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration
    from cockpit.utils.schedules import linear

    side.model = extend(side.model)
    loss_fn = extend(nn.CrossEntropyLoss())
    cockpit = Cockpit(side.model.parameters(), quantities=configuration("economy", track_schedule=linear(every)))

    def cockpit_step(s: Side, batch: Batch) -> None:
        x, y = batch
        s.optimizer.zero_grad(set_to_none=True)
        out = s.model(x)
        loss = loss_fn(out, y)
        losses = F.cross_entropy(out, y, reduction="none")
        info = {"batch_size": x.shape[0], "individual_losses": losses, "loss": loss, "optimizer": s.optimizer}
        with cockpit(s.step, info=info):
            loss.backward(create_graph=cockpit.create_graph(s.step))
        s.optimizer.step()

    side.train_step = cockpit_step


def make_side(name: str, wl: Workload, every: int, tmp: Path, ctx: dict[str, Any]) -> Side:
    """A side named ``name`` on its own model copy; the tools' state goes into ``ctx``."""
    side = _plain(name, wl)
    if name == "gfprobe":
        _gfprobe(side, every, tmp, ctx)
    elif name == "lightning":
        _lightning(side, every)
    elif name == "wandb":
        _wandb(side, every, tmp)
    elif name == "tensorboard":
        _tensorboard(side, every, tmp)
    elif name == "cockpit":
        _cockpit(side, every, wl)
    elif name not in ("plain", "plain-a/a"):
        raise ValueError(f"unknown side {name!r}")
    return side


def sides_for(names: list[str], wl: str) -> list[str]:
    """The sides that run on workload ``wl``: ``plain`` first, Cockpit only where BackPACK can."""
    chosen = ["plain", *[n for n in names if n != "plain"]]
    return [n for n in chosen if n != "cockpit" or wl in COCKPIT_WORKLOADS]


def quiet_environment(tmp: Path) -> None:
    """wandb offline into ``tmp``: no login, no network, nothing left behind."""
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp),
                      WANDB_CACHE_DIR=str(tmp / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
                      WANDB_DATA_DIR=str(tmp / "wandb-data"), WANDB_DISABLE_GIT="true")
    warnings.filterwarnings("ignore")


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # the same on every side: a drifting model must not slow one


# -- the interleaved timing (one child process per workload and frequency) -------------------
def time_sides(args: argparse.Namespace, wl: Workload, every: int, tmp: Path) -> dict[str, Any]:
    """Interleaved blocks of every side, in an order shuffled per round; per-step seconds."""
    setup_torch(args.threads)
    data = wl.data(SEED)
    ctx: dict[str, Any] = {}
    sides = [make_side(name, wl, every, tmp, ctx) for name in sides_for(args.sides, wl.name)]
    clock = FlushClock(ctx.get("probe"), enabled="probe" in ctx)
    rng = random.Random(args.seed)
    try:
        for side in sides:  # warm-up: allocator, optimizer state, each tool's first steps
            side.run(data, args.slow_warmup if side.name in SLOW_SIDES else args.warmup)
        timer: ProbeTimer | None = ctx.get("timer")
        gf_start = _gf_step(sides)
        if timer is not None:
            timer.reset()
        gc.collect()
        gc.freeze()
        clock.leave()
        fast = [s for s in sides if s.name not in SLOW_SIDES]
        for r in range(args.rounds):
            rng.shuffle(fast)
            for side in fast:
                _timed_block(side, data, r, (args.block_warmup, args.block_steps),
                             clock if side.name == "gfprobe" else None)
        hook = _hook_costs(timer, sides, gf_start, every)
        _slow_rounds(args, sides, data, every, rng)
    finally:
        gc.unfreeze()
        for side in sides:
            if side.finish is not None:
                side.finish()
    return {"sides": {s.name: s.seconds for s in sides}, "hook": hook, "file_bytes": ctx.get("file_bytes"),
            "params": sum(p.numel() for p in sides[0].model.parameters()),
            "tensors": sum(1 for _ in sides[0].model.parameters())}


def _slow_rounds(args: argparse.Namespace, sides: list[Side], data: list[Batch], every: int,
                 rng: random.Random) -> None:
    """Cockpit takes seconds per step and gigabytes per step: it runs in rounds of its own, after
    the others', paired with plain in a shuffled order, in short blocks (2 steps when every step
    is tracked, else ``every`` steps, so that each block holds one tracked step)."""
    slow = [s for s in sides if s.name in SLOW_SIDES]
    if not slow:
        return
    steps = max(2, every)
    for r in range(args.rounds, args.rounds + args.slow_rounds):
        order = [sides[0], *slow]
        rng.shuffle(order)
        for side in order:
            _timed_block(side, data, r, (1, steps), None)


def _timed_block(side: Side, data: list[Batch], r: int, steps: tuple[int, int], clock: FlushClock | None) -> None:
    """``steps``: untimed warm-up steps (which bring this side's state back into the caches), timed steps."""
    if clock is not None:
        clock.enter()
    side.run(data, steps[0])
    side.seconds[r] = side.run(data, steps[1]) / steps[1]
    if clock is not None:
        clock.leave()


def _gf_step(sides: list[Side]) -> int:
    return next((s.step for s in sides if s.name == "gfprobe"), 0)


def _hook_costs(timer: ProbeTimer | None, sides: list[Side], start: int, every: int) -> dict[str, Any] | None:
    """gfprobe's own time per step (all steps since the warm-up, timed and untimed alike)."""
    if timer is None:
        return None
    end = _gf_step(sides)
    steps = end - start
    recorded = sum(1 for s in range(start, end) if s % every == 0)
    return {"steps": steps, "recorded_steps": recorded,
            "record_ms_per_step": timer.record_ns / 1e6 / steps,
            "record_ms_per_recorded_step": timer.record_ns / 1e6 / max(recorded, 1),
            "writer_cpu_ms_per_step": 1e3 * timer.writer_s / steps,
            "writer_items": timer.writer_items}


# -- peak RSS (one child process per side) --------------------------------------------------
def peak_rss(args: argparse.Namespace, wl: Workload, every: int, side_name: str, tmp: Path) -> dict[str, Any]:
    """Train one side alone; the process's peak resident set size at the end, in KiB."""
    setup_torch(args.threads)
    data = wl.data(SEED)
    ctx: dict[str, Any] = {}
    side = make_side(side_name, wl, every, tmp, ctx)
    steps = args.rss_slow_steps if side_name in SLOW_SIDES else args.rss_steps
    side.run(data, steps)
    if side.finish is not None:
        side.finish()
    return {"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "steps": steps}


def gfprobe_buffer_bytes(n_tensors: int) -> dict[str, int]:
    """Bytes gfprobe's rows hold before a hand-over: BATCH_STEPS rows of [10 fields x tensors]
    float64 (CPU), and as much again while ``np.stack`` copies them into one block."""
    from gfprobe.adapters.torch_stats import N_FIELDS
    from gfprobe.capture.metadata import BATCH_STEPS

    rows = BATCH_STEPS * N_FIELDS * n_tensors * 8
    return {"batch_steps": BATCH_STEPS, "fields": N_FIELDS, "tensors": n_tensors,
            "rows_bytes": rows, "peak_bytes_at_handover": 2 * rows}


# -- the parent: children, summaries, the table ----------------------------------------------
def child(args: argparse.Namespace) -> int:
    """``--child KIND WORKLOAD EVERY [SIDE]``: one measurement, its JSON on stdout's last line."""
    kind, wl_name, every = args.child[0], args.child[1], int(args.child[2])
    with tempfile.TemporaryDirectory(prefix="gfprobe-peers-") as tmp_name:
        tmp = Path(tmp_name)
        quiet_environment(tmp)
        wl = workload(wl_name)
        result = (time_sides(args, wl, every, tmp) if kind == "time"
                  else peak_rss(args, wl, every, args.child[3], tmp))
    print(json.dumps(result))
    return 0


def run_child(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *_pass_through(args), "--child", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {' '.join(extra)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pass_through(args: argparse.Namespace) -> list[str]:
    out = ["--sides", ",".join(args.sides), "--seed", str(args.seed)]
    for name in ("rounds", "slow_rounds", "block_steps", "block_warmup", "warmup", "slow_warmup", "threads",
                 "rss_steps", "rss_slow_steps"):
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"config": _config(args), "environment": _environment(), "runs": []}
    for wl_name in args.workloads:
        if "cockpit" in args.sides and wl_name not in COCKPIT_WORKLOADS:
            print(f"{wl_name}: no cockpit side (BackPACK has no extension for its LayerNorm and attention)",
                  file=sys.stderr)
        for every in args.every:
            started = time.monotonic()
            timing = run_child(args, ["time", wl_name, str(every)])
            rss = {name: run_child(args, ["rss", wl_name, str(every), name])
                   for name in sides_for(args.sides, wl_name) if name != "plain-a/a"}
            run = summarise(wl_name, every, timing, rss, args.rounds)
            run["seconds"] = time.monotonic() - started
            run["per_round_seconds"] = timing["sides"]
            results["runs"].append(run)
            if args.json is not None:  # kept as it goes: a failure later loses nothing measured
                args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{wl_name} every={every}: {run['seconds']:.0f} s", file=sys.stderr)
    return results


def summarise(wl_name: str, every: int, timing: dict[str, Any], rss: dict[str, Any], rounds: int) -> dict[str, Any]:
    plain = {int(r): t for r, t in timing["sides"]["plain"].items()}
    plain_rss = rss["plain"]["maxrss_kib"]
    sides: dict[str, Any] = {}
    for name, seconds in timing["sides"].items():
        per_round = {int(r): t for r, t in seconds.items()}
        if name == "plain":  # its step time in the main rounds (Cockpit's rounds have their own blocks)
            per_round = {r: t for r, t in per_round.items() if r < rounds}
        entry: dict[str, Any] = {"rounds": len(per_round),
                                 "ms_per_step": summary([1e3 * t for t in per_round.values()])}
        if name != "plain":
            entry["ratio"] = _ratio([t / plain[r] for r, t in sorted(per_round.items())])
        if name in rss:
            entry["maxrss_mib"] = rss[name]["maxrss_kib"] / 1024
            entry["maxrss_delta_mib"] = (rss[name]["maxrss_kib"] - plain_rss) / 1024
        sides[name] = entry
    plain_ms = sides["plain"]["ms_per_step"]["median"]
    hook = timing["hook"]
    if hook is not None:
        hook["record_fraction_of_plain"] = hook["record_ms_per_step"] / plain_ms
        hook["writer_fraction_of_plain"] = hook["writer_cpu_ms_per_step"] / plain_ms
    return {"workload": wl_name, "title": workload(wl_name).title, "every": every, "params": timing["params"],
            "tensors": timing["tensors"], "sides": sides, "gfprobe_hook": hook,
            "gfprobe_file_bytes": timing["file_bytes"], "gfprobe_buffers": _buffers(timing["tensors"]),
            "noisy": _noisy(sides)}


def _ratio(ratios: list[float]) -> dict[str, Any]:
    """The median and its bootstrap interval; with fewer than 3 rounds, no interval."""
    if len(ratios) >= 3:
        return ratio_summary(ratios)
    return {**summary(ratios), "ci95": None, "blocks": ratios}


def _buffers(n_tensors: int) -> dict[str, int] | None:
    try:
        return gfprobe_buffer_bytes(n_tensors)
    except ImportError:
        return None


def _noisy(sides: dict[str, Any]) -> bool:
    control = sides.get("plain-a/a", {}).get("ratio")
    return control is not None and abs(control["median"] - 1) > CONTROL_TOLERANCE


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {"workloads": args.workloads, "sides": args.sides, "every": args.every, "rounds": args.rounds,
            "slow_rounds": args.slow_rounds, "block_steps": args.block_steps, "block_warmup": args.block_warmup,
            "warmup": args.warmup, "slow_warmup": args.slow_warmup, "threads": args.threads, "seed": args.seed,
            "rss_steps": args.rss_steps, "rss_slow_steps": args.rss_slow_steps,
            "order": "shuffled per round (random.Random(seed))"}


def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in ("gfprobe", "torch", "numpy", "scipy", "h5py", "lightning", "wandb", "tensorboard",
                 "backpack-for-pytorch", "cockpit-for-pytorch"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"python": sys.version.split()[0], "packages": packages, "gfprobe_source": source_fingerprint(),
            "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _table_rows(results: dict[str, Any]) -> Iterator[list[str]]:
    for run in results["runs"]:
        for name, side in run["sides"].items():
            ratio = side.get("ratio")
            cell = "1" if ratio is None else f"{ratio['median']:.3f}" + (
                "" if ratio["ci95"] is None else f" [{ratio['ci95'][0]:.3f}–{ratio['ci95'][1]:.3f}]")
            rss = side.get("maxrss_mib")
            delta = side.get("maxrss_delta_mib")
            rss_cell = "" if rss is None else f"{rss:.0f}" + ("" if name == "plain" else f" ({delta:+.0f})")
            yield [run["workload"], str(run["every"]), name, f"{side['ms_per_step']['median']:.2f}", cell,
                   str(side["rounds"]), rss_cell]


def render(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="step time ratio to plain: median over rounds [bootstrap 95% interval]")
    for column in ("workload", "every", "side", "ms/step", "ratio [95% CI]", "rounds", "peak RSS MiB (Δ plain)"):
        table.add_column(column, justify="left" if column in ("workload", "side") else "right")
    for row in _table_rows(results):
        table.add_row(*row)
    hooks = Table(title="gfprobe measured from inside (per training step, after the warm-up)")
    for column in ("workload", "every", "hook ms/step", "hook ms/recorded step", "hook / plain step",
                   "writer CPU ms/step", "writer / plain step", "batch buffers"):
        hooks.add_column(column, justify="right")
    for run in results["runs"]:
        hook, buf = run["gfprobe_hook"], run["gfprobe_buffers"]
        if hook is None:
            continue
        hooks.add_row(run["workload"], str(run["every"]), f"{hook['record_ms_per_step']:.3f}",
                      f"{hook['record_ms_per_recorded_step']:.3f}", f"{100 * hook['record_fraction_of_plain']:.2f}%",
                      f"{hook['writer_cpu_ms_per_step']:.4f}", f"{100 * hook['writer_fraction_of_plain']:.2f}%",
                      "" if buf is None else f"{buf['rows_bytes'] / 1024:.0f} KiB (x2 at hand-over)")
    console = Console()
    console.print(table)
    console.print(hooks)
    for run in results["runs"]:
        if run["noisy"]:
            console.print(f"[yellow]WARNING: {run['workload']} every={run['every']}: the A/A control is off 1 by "
                          f"more than {CONTROL_TOLERANCE}: a noisy machine, run again before quoting[/]")


def markdown(results: dict[str, Any]) -> str:
    """The two tables as Markdown, for benchmarks/README.md."""
    lines = ["| workload | every | side | ms/step | ratio [95% CI] | rounds | peak RSS MiB (Δ plain) |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(results)]
    lines += ["", "| workload | every | hook ms/step | hook ms/recorded step | hook / plain step | "
              "writer CPU ms/step | writer / plain step | batch buffers (256 rows) |",
              "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        hook, buf = run["gfprobe_hook"], run["gfprobe_buffers"]
        if hook is not None:
            lines.append(f"| {run['workload']} | {run['every']} | {hook['record_ms_per_step']:.3f} | "
                         f"{hook['record_ms_per_recorded_step']:.3f} | {100 * hook['record_fraction_of_plain']:.2f}% | "
                         f"{hook['writer_cpu_ms_per_step']:.3f} | {100 * hook['writer_fraction_of_plain']:.2f}% | "
                         + ("" if buf is None else f"{buf['rows_bytes'] / 1024:.0f} KiB") + " |")
    return "\n".join(lines)


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}: choose from {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workloads", type=lambda t: _names(t, WORKLOADS, "workloads"), default=list(WORKLOADS),
                        help="comma-separated, from mlp,cnn,gpt (default all)")
    parser.add_argument("--sides", type=lambda t: _names(t, ALL_SIDES, "sides"), default=list(ALL_SIDES),
                        help=f"comma-separated, from {','.join(ALL_SIDES)} (default all; plain always runs)")
    parser.add_argument("--every", type=lambda t: [int(v) for v in t.split(",")], default=[1, 10],
                        help="recording frequencies to measure, comma-separated (default 1,10)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds, one block per side each (default 30)")
    parser.add_argument("--slow-rounds", type=int, default=5,
                        help="rounds of Cockpit against plain, after the others' (default 5)")
    parser.add_argument("--block-steps", type=int, default=10, help="timed steps per block (default 10)")
    parser.add_argument("--block-warmup", type=int, default=2, help="untimed steps before each block (default 2)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per side before round 1 (default 30)")
    parser.add_argument("--slow-warmup", type=int, default=1, help="the same for Cockpit (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round order (default 0)")
    parser.add_argument("--rss-steps", type=int, default=100,
                        help="steps of each side's peak-RSS child process (default 100)")
    parser.add_argument("--rss-slow-steps", type=int, default=3, help="the same for Cockpit (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write every timing and the summary here")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 9 rounds (Cockpit 1), short warm-ups, 20 RSS steps (Cockpit 1)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: print the tables of a --json file as Markdown")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.slow_rounds, args.warmup, args.slow_warmup = 9, 1, 5, 1
        args.rss_steps, args.rss_slow_steps = 20, 1
    if args.rounds < 9 or min(args.every) < 1 or args.block_steps < 1 or args.slow_rounds < 1:
        parser.error("--rounds must be at least 9 for a meaningful median; --every, --block-steps and "
                     "--slow-rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    missing = _missing_peers(args.sides)
    if missing:
        raise SystemExit(f"missing peer packages for sides {missing}: install benchmarks/requirements-peers.txt "
                         "(make bench-peers does it in .venv-peers), or leave those sides out with --sides")
    results = measure(args)
    render(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _missing_peers(sides: list[str]) -> list[str]:
    from importlib.util import find_spec

    modules = {"gfprobe": "gfprobe", "lightning": "lightning", "wandb": "wandb", "tensorboard": "tensorboard",
               "cockpit": "cockpit"}
    return [s for s in sides if s in modules and find_spec(modules[s]) is None]


if __name__ == "__main__":
    sys.exit(main())
