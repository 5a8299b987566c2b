"""gfprobe's own cost in its run files (hook and writer time per recorded step) and what reads
it: ``inspect``, ``report``, ``check``'s ``overhead`` rule, ``merge``, and files written before it.

Times are only ever bounded from below here, by work the test adds to gfprobe's path (a sleep in
the schedule, CPU burnt in the writer): a busy machine makes them longer, never shorter.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_watch import make_model, train

import gfprobe
from gfprobe.adapters import torch_probe
from gfprobe.analysis.check import check_stream
from gfprobe.analysis.check_config import validate
from gfprobe.analysis.cost import observation_cost
from gfprobe.cli import main
from gfprobe.store import writer as writer_module
from gfprobe.store.merge import merge
from gfprobe.store.reader import ParamTable, StreamData, open_run
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runs"
SLEEP = 0.01  # seconds added to every optimizer step's hook


def slow_every(interval: int) -> gfprobe.schedule.Schedule:
    """A schedule (called once per optimizer step, inside gfprobe's hook) that takes SLEEP."""
    def schedule(step: int) -> bool:
        time.sleep(SLEEP)
        return step % interval == 0
    return schedule


def record(path: Path, steps: int, every: int | gfprobe.schedule.Schedule = 1) -> StreamData:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with gfprobe.watch(model, opt, out=path, every=every):
        train(model, opt, steps)
    with open_run(path) as run:
        return run.stream(0)


def test_each_record_carries_gfprobe_time_since_the_previous_one(tmp_path: Path) -> None:
    stream = record(tmp_path / "run.h5", 21, slow_every(4))
    assert stream.steps.tolist() == [0, 4, 8, 12, 16, 20]
    assert stream.hook_time is not None and stream.writer_time is not None
    # Each record after the first carries the hooks of the 4 steps since the previous record.
    assert (stream.hook_time[1:] >= 4 * SLEEP).all(), stream.hook_time
    assert stream.hook_time[0] >= SLEEP
    assert np.isfinite(stream.writer_time).all() and (stream.writer_time >= 0).all()
    cost = observation_cost(stream)
    assert cost is not None and cost.records == 5 and cost.hook >= 4 * SLEEP
    assert 0 < cost.fraction <= 1  # the hook is inside the interval it is set against


def test_writer_time_is_the_writer_threads_cpu_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    burn = 0.03  # CPU seconds the writer spends on every block it stores

    def append_steps(self: RunWriter, block: StepBlock) -> None:
        start = time.thread_time()
        while time.thread_time() - start < burn:
            pass
        original(self, block)

    original = writer_module.RunWriter.append_steps
    monkeypatch.setattr(writer_module.RunWriter, "append_steps", append_steps)
    monkeypatch.setattr(torch_probe, "BATCH_STEPS", 5)  # a block of 5 rows every 5 steps
    stream = record(tmp_path / "run.h5", 20)
    assert stream.writer_time is not None
    blocks = stream.writer_time.reshape(4, 5)
    assert (blocks == blocks[:, :1]).all(), "a block's writer time is spread evenly over its rows"
    # Each block carries what the writer did since the one before: the previous block's burn.
    assert (blocks[1:, 0] * 5 >= burn).all(), blocks[:, 0]


def test_files_from_before_the_measurement_say_not_measured(tmp_path: Path) -> None:
    with open_run(FIXTURES / "dense.h5") as run:
        stream = run.stream(0)
    assert stream.hook_time is None and stream.writer_time is None and observation_cost(stream) is None
    runner = CliRunner()
    report = json.loads(runner.invoke(main, ["report", str(FIXTURES / "dense.h5"), "--format", "json"]).output)
    assert report["runs"][0]["gfprobe_cost"] is None
    inspect = runner.invoke(main, ["inspect", str(FIXTURES / "dense.h5")], env={"GFPROBE_WIDTH": "200"})
    assert "gfprobe's own time: not measured" in inspect.output
    check = json.loads(runner.invoke(main, ["check", str(FIXTURES / "dense.h5"), "--format", "json"]).output)
    overhead = next(r for r in check["runs"][0]["results"] if r["rule"] == "overhead")
    assert overhead["status"] == "skip" and "not measured" in overhead["message"]


def test_inspect_report_and_check_show_the_cost(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    cost = observation_cost(record(path, 30, slow_every(1)))
    assert cost is not None
    runner = CliRunner()
    inspect = json.loads(runner.invoke(main, ["inspect", str(path), "--format", "json"]).output)
    shown = inspect["streams"][0]["cost"]
    assert shown["fraction"] == pytest.approx(cost.fraction) and shown["hook_s"] >= SLEEP
    table = runner.invoke(main, ["inspect", str(path)], env={"GFPROBE_WIDTH": "200"}).output
    assert f"gfprobe's own time: {cost.fraction:.1%} of the step time" in table
    report = json.loads(runner.invoke(main, ["report", str(path), "--format", "json"]).output)
    assert report["runs"][0]["gfprobe_cost"] == pytest.approx(cost.fraction)
    text = runner.invoke(main, ["report", str(path)], env={"GFPROBE_WIDTH": "200"}).output
    assert "gfprobe cost" in text and f"{cost.fraction:.1%}" in text


def test_overhead_rule_fails_above_its_limit_and_says_which_every_fits(tmp_path: Path) -> None:
    stream = record(tmp_path / "run.h5", 30, slow_every(1))
    cost = observation_cost(stream)
    assert cost is not None
    within = check_stream(stream, "run.h5", validate({"overhead": {"max_fraction": cost.fraction * 1.01}}))
    assert next(f for f in within.findings if f.rule == "overhead").status == "pass"
    above = check_stream(stream, "run.h5", validate({"overhead": {"max_fraction": cost.fraction / 2.5}}))
    finding = next(f for f in above.findings if f.rule == "overhead")
    assert finding.status == "fail" and not above.passed
    assert "record every 3 steps (--every 3)" in finding.message and finding.value == pytest.approx(cost.fraction)


def synthetic(hook: list[float], writer: list[float], times: list[float]) -> StreamData:
    n = len(times)
    return StreamData(0, "Adam", ParamTable([], [], np.zeros(0), [], [], []), np.arange(n), np.asarray(times),
                      np.zeros(n, dtype=bool), {}, {}, np.asarray(hook), np.asarray(writer))


def test_the_cost_is_a_median_so_one_preempted_hook_does_not_move_it() -> None:
    times = [0.0, 0.01, 0.02, 0.03, 0.24, 0.25]  # the 4th step took 0.21 s: preempted inside the hook
    cost = observation_cost(synthetic([9.0, 0.001, 0.001, 0.2, 0.001, 0.001], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], times))
    assert cost is not None and cost.records == 5
    assert cost.hook == pytest.approx(0.001) and cost.interval == pytest.approx(0.01)
    assert cost.fraction == pytest.approx(0.1)


def test_unmeasured_rows_are_left_out_and_too_few_records_give_no_cost() -> None:
    nan = math.nan
    cost = observation_cost(synthetic([0.0, nan, 0.002, 0.002], [0.0, 0.001, 0.001, nan], [0.0, 1.0, 2.0, 3.0]))
    assert cost is not None and cost.records == 1 and cost.fraction == pytest.approx(0.003)
    assert observation_cost(synthetic([0.0, nan], [0.0, 0.0], [0.0, 1.0])) is None
    assert observation_cost(synthetic([0.1], [0.1], [0.0])) is None


def rank_file(path: Path, rank: int, hook: list[float] | None) -> None:
    writer = RunWriter(path, {"rank": rank, "world_size": 2, "sharded": True}, {})
    writer.add_stream("Adam", [ParamInfo("w", (4,), "weight", "Linear")])
    n = 3
    stats = np.ones((n, 10, 1))
    writer.append_steps(StepBlock(0, np.arange(n), np.arange(n, dtype=float), np.zeros(n, dtype=np.uint8), stats,
                                  None if hook is None else np.asarray(hook), np.full(n, 0.001)))
    writer.close("complete", {})


def test_a_merged_sharded_run_keeps_the_slowest_ranks_cost(tmp_path: Path) -> None:
    rank_file(tmp_path / "run.rank0.h5", 0, [0.1, 0.5, 0.2])
    rank_file(tmp_path / "run.rank1.h5", 1, [0.3, 0.4, 0.2])
    merge([tmp_path / "run.rank0.h5", tmp_path / "run.rank1.h5"], tmp_path / "run.h5")
    with open_run(tmp_path / "run.h5") as run:
        stream = run.stream(0)
    assert stream.hook_time is not None and stream.hook_time.tolist() == pytest.approx([0.3, 0.5, 0.2])
    assert stream.writer_time is not None and stream.writer_time.tolist() == pytest.approx([0.001] * 3)


def test_a_rank_without_a_measurement_leaves_the_merged_cost_unmeasured(tmp_path: Path) -> None:
    rank_file(tmp_path / "run.rank0.h5", 0, [0.1, 0.5, 0.2])
    rank_file(tmp_path / "run.rank1.h5", 1, None)
    merge([tmp_path / "run.rank0.h5", tmp_path / "run.rank1.h5"], tmp_path / "run.h5")
    with open_run(tmp_path / "run.h5") as run:
        stream = run.stream(0)
    assert stream.hook_time is not None and np.isnan(stream.hook_time).all()
    assert observation_cost(stream) is None
