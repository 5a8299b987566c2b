"""Multi-process training under ``gfprobe record``: FSDP2 (DTensor shards), DDP, dying ranks.

Real ``torchrun`` with 2 ranks and gloo on CPU. The statistics gfprobe records from each rank's
shard, merged, must equal those of the full gradient: the script's own ``full_tensor()``
statistics, and a one-process run on the same global batches.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, child_env, gloo_aborted, record

from gfprobe.errors import RunFileError
from gfprobe.launcher import RecordOptions, prepare
from gfprobe.store.merge import merge
from gfprobe.store.reader import StreamData, open_run
from gfprobe.store.schema import INT_STAT_FIELDS, STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

PY = sys.executable
FIELDS = ("sumsq", "sum_abs", "max_abs")
NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
SHAPES = [(33, 12), (33,), (33,), (33,), (5, 33), (5,)]


def torchrun(*args: str) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(SCRIPTS / "train_fsdp.py"), *args]


def plain_torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The reference run, without gfprobe. On a loaded machine torch's gloo threads sometimes abort
    a rank at exit ("terminate called without an active exception", exit -6), gfprobe or not (seen
    once in four full suites, with two other jobs running): such a run is retried once. The runs
    under gfprobe are never retried."""
    for _ in range(2):
        plain = subprocess.run(torchrun(*args), capture_output=True, text=True, timeout=180, cwd=cwd,
                               env=child_env())
        if not gloo_aborted(plain):
            break
    return plain


def stream_of(path: Path) -> StreamData:
    with open_run(path) as run:
        assert run.metadata["status"] == "complete"
        return run.stream(0)


def assert_equal_to_full_gradients(stream: StreamData, seen: list[dict[str, Any]], rtol: float) -> None:
    """Every recorded statistic, every parameter, every step, against the script's full gradient."""
    assert stream.steps.tolist() == list(range(len(seen)))
    for step, by_name in enumerate(seen):
        for column, name in enumerate(stream.params.names):
            for k, field in enumerate(FIELDS):
                np.testing.assert_allclose(stream.stats[field][step, column], by_name[name][k], rtol=rtol,
                                           err_msg=f"{field} of {name} at step {step}")


def assert_same_output(plain: subprocess.CompletedProcess[str], recorded: subprocess.CompletedProcess[str]) -> None:
    """The job's own output with and without gfprobe: exit code, each rank's lines, final weights.

    Two ranks share one stdout pipe, so their lines may interleave: compare what each printed."""
    assert plain.returncode == recorded.returncode == 0, plain.stderr
    for line in ("rank 0 done", "rank 1 done"):
        assert line in plain.stdout and line in recorded.stdout
    weights = [re.findall(r"weights [0-9a-f]{64}", run.stdout) for run in (plain, recorded)]
    assert len(weights[0]) == 1 and weights[0] == weights[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp1"])
def test_sharded_training_records_the_full_gradient_exactly(tmp_path: Path, mode: str) -> None:
    """FSDP2 (DTensor gradients) and FSDP1 with use_orig_params (1-D pieces of each parameter)."""
    out, saved, single = tmp_path / "run.h5", tmp_path / "fsdp.pt", tmp_path / "single.pt"
    result = record(out, torchrun("--mode", mode, "--save", str(saved)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "merged the statistics of 2 ranks" in result.stderr
    assert sorted(tmp_path.glob("*.h5")) == [out]  # the rank files were merged, then removed

    stream = stream_of(out)
    assert stream.params.names == NAMES and stream.params.shapes == SHAPES  # unsharded names and shapes
    assert stream.params.kinds == ["weight", "bias", "norm", "norm", "weight", "bias"]
    assert stream.stats["active"][0].tolist() == [33 * 12, 33, 33, 33, 5 * 33, 5]  # every element once
    assert_equal_to_full_gradients(stream, torch.load(saved)["steps"], rtol=1e-6)

    single_process = subprocess.run([PY, str(SCRIPTS / "train_fsdp.py"), "--mode", "single", "--save", str(single)],
                                    capture_output=True, text=True, timeout=120, env=child_env())
    assert single_process.returncode == 0, single_process.stderr
    assert_equal_to_full_gradients(stream, torch.load(single)["steps"], rtol=1e-5)  # same global batch

    # Never harm the job: the same output, final weights included, and exit code without gfprobe.
    plain = plain_torchrun(tmp_path, "--mode", mode, "--save", str(tmp_path / "plain.pt"))
    assert plain.returncode == 0, plain.stderr
    assert_same_output(plain, result)


@pytest.mark.slow
def test_ddp_rank0_by_default_every_rank_with_all_ranks(tmp_path: Path) -> None:
    default, saved = tmp_path / "default" / "run.h5", tmp_path / "ddp.pt"
    result = record(default, torchrun("--mode", "ddp", "--save", str(saved)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(default.parent.glob("*.h5")) == [default]
    seen = torch.load(saved)["steps"]
    assert_equal_to_full_gradients(stream_of(default), seen, rtol=1e-6)
    plain = plain_torchrun(tmp_path, "--mode", "ddp", "--save", str(tmp_path / "plain.pt"))
    assert_same_output(plain, result)

    every = tmp_path / "all" / "run.h5"
    result = record(every, torchrun("--mode", "ddp", "--save", str(saved)), options=["--all-ranks"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rank_files = sorted(every.parent.glob("*.h5"))
    assert [p.name for p in rank_files] == ["run.rank0.h5", "run.rank1.h5"]
    for rank, path in enumerate(rank_files):  # whole runs of their own: reports read them
        with open_run(path) as run:
            assert (run.metadata["rank"], run.metadata["world_size"], run.metadata["sharded"]) == (rank, 2, False)
        assert_equal_to_full_gradients(stream_of(path), seen, rtol=1e-6)  # DDP: identical after all-reduce


@pytest.mark.slow
def test_a_rank_killed_mid_run_leaves_readable_files_and_no_hang(tmp_path: Path) -> None:
    """Rank 1 SIGKILLs itself at step 20. Its unflushed rows are lost (rows wait up to
    FLUSH_SECONDS before reaching the file), and rank 0 either fails in gloo or is stopped by
    torchrun; which one, and how many rows each file holds, depends on timing. What must hold
    whatever the timing: the job's failure is gfprobe's exit code, nothing hangs, every file left
    behind reads back, and the merged run holds only steps both ranks recorded."""
    out = tmp_path / "run.h5"
    result = record(out, torchrun("--mode", "fsdp2", "--steps", "40", "--die-at", "20",
                                  "--save", str(tmp_path / "x.pt")), cwd=tmp_path, timeout=180)
    assert result.returncode != 0
    gfprobe_lines = [line for line in result.stderr.splitlines() if line.startswith("gfprobe:")]
    assert gfprobe_lines and "merged" in gfprobe_lines[0], result.stderr
    with open_run(out) as run:
        merged = run.stream(0)
        assert run.metadata["status"] in ("failed", "interrupted")
    assert merged.steps.tolist() == list(range(merged.steps.size)) and merged.steps.size <= 20
    kept = sorted(tmp_path.glob("run.rank*.h5"))
    assert [p.name for p in kept] in ([], ["run.rank0.h5", "run.rank1.h5"])
    assert bool(kept) == ("leaving out" in gfprobe_lines[0])
    for path in kept:
        with open_run(path, shards_ok=True) as run:
            assert set(merged.steps) <= set(run.stream(0).steps) <= set(range(20))


def test_merge_adds_sums_maxes_maxima_and_keeps_only_common_steps(tmp_path: Path) -> None:
    """Rank files written directly, so that the ranks' step counts differ deterministically."""
    rng = np.random.default_rng(0)
    params = [ParamInfo("w", (4, 3), "weight", "Linear"), ParamInfo("b", (4,), "bias", "Linear")]
    shards = [tmp_path / f"run.rank{r}.h5" for r in range(2)]
    blocks = []
    for rank, (path, n_steps) in enumerate(zip(shards, (5, 3), strict=True)):
        writer = RunWriter(path, {"rank": rank, "world_size": 2, "sharded": True}, {"seed": 1})
        writer.add_stream("SGD", params)
        stats = rng.random((n_steps, len(STAT_FIELDS), 2))
        for field in INT_STAT_FIELDS:  # stored as integers
            stats[:, STAT_FIELDS.index(field)] = rng.integers(0, 5, (n_steps, 2))
        stats[:, STAT_FIELDS.index("has_grad")] = rank  # rank 0 lacked a gradient: max says present
        writer.append_steps(StepBlock(0, np.arange(n_steps), np.arange(n_steps) * 0.1 + rank,
                                      np.zeros(n_steps, np.uint8), stats))
        writer.close("complete" if rank == 0 else "interrupted", {})
        blocks.append(stats[:3])

    with pytest.raises(RunFileError, match="rank 0 of 2 of a sharded"), open_run(shards[0]):
        pass
    result = merge(shards, tmp_path / "run.h5")
    assert (result.steps, result.dropped) == ([3], [2])
    with open_run(tmp_path / "run.h5") as run:
        assert run.metadata["status"] == "interrupted" and run.attrs == {"seed": 1}
        assert "sharded" not in run.metadata and run.metadata["merged_ranks"] == 2
        stream = run.stream(0)
    assert stream.steps.tolist() == [0, 1, 2]
    for index, field in enumerate(STAT_FIELDS):
        both = np.stack([b[:, index] for b in blocks])
        expected = both.max(axis=0) if field in ("max_abs", "masked_max_abs", "has_grad") else both.sum(axis=0)
        np.testing.assert_allclose(stream.stats[field], expected, rtol=1e-6, err_msg=field)


@pytest.mark.slow
def test_shard_files_are_refused_by_readers_and_merged_by_the_cli(tmp_path: Path) -> None:
    saved = tmp_path / "fsdp.pt"
    out = tmp_path / "run.h5"
    # The environment 'gfprobe record' gives its child, without the launcher: nothing merges, as
    # for a gfprobe.watch() user.
    command = torchrun("--mode", "fsdp2", "--steps", "3", "--save", str(saved))
    argv, env, _ = prepare(command, RecordOptions(out=out))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env={**env, **child_env(), "GFPROBE_RECORD": env["GFPROBE_RECORD"],
                                 "PYTHONPATH": env["PYTHONPATH"]})
    assert result.returncode == 0, result.stderr
    rank_files = sorted(tmp_path.glob("run.rank*.h5"))
    assert len(rank_files) == 2 and not out.exists()

    report = subprocess.run([PY, "-m", "gfprobe", "report", str(rank_files[0])], capture_output=True,
                            text=True, timeout=60, env=child_env())
    assert report.returncode == 2
    assert report.stderr.count("\n") == 1 and "gfprobe merge" in report.stderr, report.stderr
    with pytest.raises(RunFileError, match="ranks \\[1\\]"):
        merge(rank_files[1:], tmp_path / "partial.h5")

    merged = subprocess.run([PY, "-m", "gfprobe", "merge", *map(str, rank_files)], capture_output=True,
                            text=True, timeout=60, env=child_env())
    assert merged.returncode == 0, merged.stderr
    assert_equal_to_full_gradients(stream_of(out), torch.load(saved)["steps"], rtol=1e-6)
