"""The probe-batch protocol (Evci et al. 2020): measurement streams in the capture layer, the
study's probe pass (it never changes the training it observes), the stream's protocol in the run
file, and ``gfprobe report --stream`` by name, several at once, labelled by protocol."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FIXTURES, child_env
from torch import nn
from torch.nn import functional as F

import gfprobe
from gfprobe.cli import main
from gfprobe.errors import ConfigError, RunFileError
from gfprobe.store.merge import merge
from gfprobe.store.reader import open_run
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock
from gfprobe.study.config import RunSpec, parse_study
from gfprobe.study.data import ProbeBatch
from gfprobe.study.probe import ProbePass
from gfprobe.study.train import train_model

PROBE_ATTRS = {"protocol": "probe-batch", "batch_size": 64, "every": 5, "held_out": True, "mode": "train"}
PARAMS = [ParamInfo("fc1.weight", (4, 3), "weight", "Linear"), ParamInfo("fc2.weight", (2, 4), "weight", "Linear")]
F_INDEX = {name: i for i, name in enumerate(STAT_FIELDS)}


# -- the study's probe pass ------------------------------------------------------------------------


def spec(**settings: Any) -> RunSpec:
    """A sparse BatchNorm MLP on the digits with augmentation and momentum: every kind of state
    the probe pass could disturb (masks, running statistics, the run's generator, momentum)."""
    grid = {"dataset": "digits", "sparse_width": 32, "density": 0.5, "optimizer": "momentum", "lr": 0.05,
            "regularisation": "DA_BN", "seed": 3}
    study = {"epochs": 2, "batch_size": 64, "eval_every": 1, "probe_batch": 100, **settings}
    (sparse,) = (run for run in parse_study({"study": study, "grid": [grid]}).runs if run.sparse)
    return sparse


def test_training_is_bit_identical_with_the_probe_on_or_off(tmp_path: Path) -> None:
    off = train_model(spec(probe_every=0), tmp_path / "off.h5")
    on = train_model(spec(probe_every=3), tmp_path / "on.h5")
    before, after = off.model.state_dict(), on.model.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in key for key in before)
    for key in before:  # weights, biases, BatchNorm's running statistics and batch count
        assert torch.equal(before[key], after[key]), key
    assert (off.test_acc, off.test_loss) == (on.test_acc, on.test_loss)
    with open_run(tmp_path / "off.h5") as a, open_run(tmp_path / "on.h5") as b:
        assert a.stream_names() == ["SGD"] and b.stream_names() == ["SGD", "probe"]
        minibatch_off, minibatch_on = a.stream(0), b.stream(0)
        probe = b.stream("probe")
        assert b.attrs["probe_every"] == 3 and b.attrs["probe_batch"] == 100
    # The optimizer's stream records the same gradients, step for step.
    assert np.array_equal(minibatch_off.steps, minibatch_on.steps)
    for field in STAT_FIELDS:
        assert np.array_equal(minibatch_off.stats[field], minibatch_on.stats[field], equal_nan=True), field
    steps_per_epoch = -(-(1437 - 100) // 64)
    assert probe.steps.tolist() == list(range(0, 2 * steps_per_epoch, 3))
    assert probe.protocol == "probe-batch" and minibatch_on.protocol == "minibatch"
    assert probe.attrs == {"protocol": "probe-batch", "batch_size": 100, "every": 3, "held_out": True, "mode": "train"}
    assert probe.params.names == minibatch_on.params.names
    assert probe.params.mask_sources == minibatch_on.params.mask_sources  # the same masks: an effective EGF


def test_the_probe_gradient_is_the_plain_loss_gradient_in_training_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    batch = ProbeBatch(torch.randn(20, 6), torch.randint(0, 3, (20,)))
    expected = []
    with gfprobe.watch(model, optimizer, out=tmp_path / "run.h5") as probe:
        measure = ProbePass(probe, model, batch, every=2)
        for step in range(5):
            if step % 2 == 0:  # a reference on a copy: autograd, training mode, no decay term
                reference = copy.deepcopy(model)
                loss = F.cross_entropy(reference(batch.x), batch.y)
                grads_of_copy = torch.autograd.grad(loss, list(reference.parameters()))
                expected.append([float(g.pow(2).sum()) for g in grads_of_copy])
            state = {key: value.clone() for key, value in model.state_dict().items()}
            grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            measure()
            for key, value in model.state_dict().items():
                assert torch.equal(value, state[key]), key  # running statistics put back
            for p, g in zip(model.parameters(), grads, strict=True):  # .grad neither written nor created
                assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream_names() == ["SGD", "probe"]  # measured before the first step, yet stream 1
        recorded = run.stream("probe")
    assert recorded.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(recorded.stats["sumsq"], np.array(expected), rtol=1e-5)


# -- measurement streams, the capture API ----------------------------------------------------------


def tiny() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_a_measurement_stream_records_given_gradients_at_the_optimizer_step(tmp_path: Path) -> None:
    model, optimizer = tiny()
    with gfprobe.watch(model, optimizer, out=tmp_path / "run.h5") as probe:
        stream = probe.measurement_stream("probe", model.parameters(), {"protocol": "mine", "k": [1, 2]})
        for step in range(3):
            model(torch.ones(2, 3)).sum().backward()
            optimizer.step()
            stream.record([torch.full_like(p, 2.0) for p in stream.params])
            stream.record([None] * len(stream.params), step=100 + step)
    assert not stream.due()  # closed: nothing records
    with open_run(tmp_path / "run.h5") as run:
        data = run.stream(1)
    assert data.steps.tolist() == [1, 100, 2, 101, 3, 102] and data.attrs == {"protocol": "mine", "k": [1, 2]}
    numel = np.array([p.numel() for p in model.parameters()])
    np.testing.assert_array_equal(data.stats["sumsq"][0], 4.0 * numel)
    assert data.stats["has_grad"][1].tolist() == [0] * 4


def test_measurements_alone_are_written_when_the_run_closes(tmp_path: Path) -> None:
    model, _ = tiny()
    with gfprobe.watch(model, out=tmp_path / "run.h5") as probe:
        stream = probe.measurement_stream("probe", model.parameters(), every=2)
        assert [stream.due(step) for step in range(4)] == [True, False, True, False]
        stream.measure(model(torch.ones(2, 3)).sum())
        assert stream.index is None  # waits for an optimizer, which keeps stream 0
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream_names() == ["probe"] and run.stream(0).protocol == "minibatch"


@pytest.mark.parametrize(("call", "message"), [
    (lambda p, m: p.measurement_stream("", m.parameters()), "name '' must be 1 to 64 bytes"),
    (lambda p, m: p.measurement_stream("x" * 65, m.parameters()), "must be 1 to 64 bytes"),
    (lambda p, m: p.measurement_stream("probe", []), "params must be a non-empty list of tensors"),
    (lambda p, m: p.measurement_stream("probe", m.parameters(), {"a": float("nan")}), "JSON"),
    (lambda p, m: p.measurement_stream("probe", m.parameters(), {"a": "x" * 2000}), "more than the 1024"),
    (lambda p, m: p.measurement_stream("probe", m.parameters(), every=0), "at least 1"),
    (lambda p, m: p.measurement_stream("probe", m.parameters()).record([None]), "measures 4 parameters, got 1"),
    (lambda p, m: p.measurement_stream("probe", m.parameters()).record([None] * 4, step=-1), "non-negative"),
], ids=["empty-name", "long-name", "no-params", "nan-attr", "long-attrs", "every-0", "grads", "step"])
def test_measurement_stream_misuse_is_one_clear_error(tmp_path: Path, call: Any, message: str) -> None:
    model, optimizer = tiny()
    with gfprobe.watch(model, optimizer, out=tmp_path / "run.h5") as probe, \
            pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call(probe, model)


# -- the run file: stream attributes ---------------------------------------------------------------


def write_two_streams(path: Path, acc: float = 0.5, sparse: bool = True, steps: int = 12,
                      names: tuple[str, str] = ("SGD", "probe"), metadata: dict[str, Any] | None = None) -> Path:
    """A run with an optimizer's stream and a probe stream, whose egf_2 summaries are 1 and 2."""
    writer = RunWriter(path, {"command": ["fixture"], **(metadata or {})}, {"sparse": sparse, "seed": 0})
    for index, (name, scale) in enumerate(zip(names, (1.0, 2.0), strict=True)):
        writer.add_stream(name, PARAMS, PROBE_ATTRS if index else None)
        stats = np.zeros((steps, len(STAT_FIELDS), len(PARAMS)))
        stats[:, F_INDEX["sumsq"]] = stats[:, F_INDEX["masked_sumsq"]] = scale**2
        stats[:, F_INDEX["sum_abs"]] = stats[:, F_INDEX["masked_sum_abs"]] = scale
        stats[:, F_INDEX["active"]] = [p.numel for p in PARAMS]
        stats[:, F_INDEX["has_grad"]] = 1
        every = 5 if index else 1
        writer.append_steps(StepBlock(index, np.arange(steps) * every, np.zeros(steps), np.zeros(steps, np.uint8),
                                      stats))
    writer.append_metrics([("test_acc", steps, 1.0, acc)])
    writer.close("complete", {})
    return path


def test_files_without_stream_attributes_are_minibatch() -> None:
    path = FIXTURES / "runs" / "dense.h5"
    with h5py.File(path, "r") as f:
        assert "attrs" not in f["streams"]  # written before streams had attributes
    with open_run(path) as run:
        assert run.stream(0).protocol == "minibatch" and run.stream_attrs(0) == {}
        assert run.stream("Adam").index == 0


def test_stream_attributes_read_back_and_damage_is_named(tmp_path: Path) -> None:
    path = write_two_streams(tmp_path / "run.h5")
    with open_run(path) as run:
        assert run.stream_attrs(0) == {} and run.stream_attrs(1) == PROBE_ATTRS
        assert run.stream("probe").protocol == "probe-batch" and run.stream("1").index == 1
        with pytest.raises(RunFileError, match="has no stream named 'Adam'; its streams: 0 SGD, 1 probe"):
            run.stream("Adam")
    with h5py.File(path, "r+") as f:
        f["streams/attrs"][1] = b"[1, 2]"
    with open_run(path) as run, pytest.raises(RunFileError, match="cannot read its stream attributes"):
        run.stream(1)
    with h5py.File(path, "r+") as f:
        f["streams/attrs"].resize((1,))
    with pytest.raises(RunFileError, match="streams/attrs has 1 rows for 2 streams"), open_run(path):
        pass


def test_two_streams_of_one_name_are_picked_by_index(tmp_path: Path) -> None:
    path = write_two_streams(tmp_path / "run.h5", names=("Adam", "Adam"))
    with open_run(path) as run, pytest.raises(RunFileError, match="2 streams are named 'Adam'; pass one's index"):
        run.stream("Adam")


def test_merging_rank_files_keeps_the_stream_attributes(tmp_path: Path) -> None:
    ranks = [write_two_streams(tmp_path / f"run.rank{r}.h5", metadata={"sharded": True, "rank": r, "world_size": 2})
             for r in range(2)]
    merge(ranks, tmp_path / "run.h5")
    with open_run(tmp_path / "run.h5") as run:
        probe = run.stream("probe")
    assert probe.attrs == PROBE_ATTRS
    np.testing.assert_allclose(probe.stats["sumsq"], 8.0)  # each rank's shard adds: 4 + 4


# -- gfprobe report --stream -----------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path: Path) -> list[str]:
    """Four runs with a probe stream (two sparse, two dense) and one with only the optimizer's."""
    paths = [str(write_two_streams(tmp_path / f"r{i}.h5", acc=0.5 + 0.1 * i, sparse=i % 2 == 0)) for i in range(4)]
    single = RunWriter(tmp_path / "single.h5", {"command": ["fixture"]}, {"sparse": False})
    single.add_stream("SGD", PARAMS)
    single.close("complete", {})
    return [*paths, str(tmp_path / "single.h5")]


def report(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["report", *args], env={"NO_COLOR": "1", "GFPROBE_WIDTH": "140"})
    return result.exit_code, result.stdout, result.stderr


def test_the_default_report_is_stream_0_and_names_its_protocol(runs: list[str]) -> None:
    code, out, _ = report(*runs, "--format", "json")
    payload = json.loads(out)
    assert code == 0 and set(payload) == {"runs"}  # no heading: the minibatch stream, as ever
    assert {r["stream"]["protocol"] for r in payload["runs"]} == {"minibatch"}
    assert payload["runs"][0]["stream"] == {"index": 0, "name": "SGD", "protocol": "minibatch", "attrs": {}}
    code, out, _ = report(*runs, "--format", "csv")
    assert out.splitlines()[0].startswith("path,stream,protocol,steps") and ",SGD,minibatch," in out
    code, out, _ = report(*runs)
    assert out.startswith("Gradient flow (minibatch): ") and "Stream" not in out


def test_a_stream_by_name_is_headed_by_its_protocol(runs: list[str]) -> None:
    code, out, err = report(*runs[:4], "--stream", "probe", "--correlate", "test_acc", "--runs", "--format", "json")
    payload = json.loads(out)
    assert code == 0, err
    assert payload["stream"] == {
        "selector": "probe", "protocols": ["probe-batch"],
        "label": "stream probe: probe-batch gradient of 64 held-out training examples, every 5 optimizer steps"}
    assert [r["measures"]["egf_2"] for r in payload["runs"]] == [2.0] * 4  # the probe stream's values
    assert payload["correlation"]
    code, out, _ = report(*runs[:4], "--stream", "probe", "--correlate", "test_acc")
    assert out.startswith("Stream probe: probe-batch gradient of 64 held-out training examples, every 5 optimizer "
                          "steps\n") and "Kendall" in out


def test_a_run_without_the_stream_is_listed_and_the_others_reported(runs: list[str]) -> None:
    code, out, err = report(*runs, "--stream", "probe", "--format", "json")
    assert code == 2 and len(json.loads(out)["runs"]) == 4
    assert "single.h5: has no stream named 'probe'; its streams: 0 SGD" in err


@pytest.mark.parametrize("picks", [["--stream", "all"], ["--stream", "0", "--stream", "probe", "--stream", "0"]])
def test_several_streams_side_by_side(runs: list[str], picks: list[str]) -> None:
    files = runs if picks == ["--stream", "all"] else runs[:4]
    code, out, err = report(*files, *picks, "--scsdc", "--runs", "--format", "json")
    assert code == 0, err  # with 'all', a run with fewer streams is left out of the further ones
    blocks = json.loads(out)["streams"]
    assert [b["stream"]["protocols"] for b in blocks] == [["minibatch"], ["probe-batch"]]
    assert [len(b["runs"]) for b in blocks] == [len(files), 4]
    assert [{r["measures"]["egf_2"] for r in b["runs"][:4]} for b in blocks] == [{1.0}, {2.0}]
    assert all("scsdc" in b for b in blocks)
    code, out, _ = report(*files, *picks, "--format", "markdown")
    assert [line for line in out.splitlines() if line.startswith("# ")] == [
        f"# Stream {blocks[0]['stream']['selector']}: minibatch gradient, the one each optimizer step consumed",
        f"# Stream {blocks[1]['stream']['selector']}: probe-batch gradient of 64 held-out training examples, "
        "every 5 optimizer steps"]
    assert "**Gradient flow (probe-batch): " in out
    code, out, _ = report(*files, *picks, "--format", "csv")
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("#")] == [
        f"# stream {b['stream']['selector']}" for b in blocks]


def test_report_of_streams_works_without_torch(runs: list[str], tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    for name in ("torch", "torchvision"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ModuleNotFoundError('no {name}', name={name!r})\n")
    done = subprocess.run([sys.executable, "-m", "gfprobe", "report", *runs[:4], "--stream", "all", "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=child_env(PYTHONPATH=str(blocked)))
    assert done.returncode == 0, done.stderr
    assert [b["stream"]["selector"] for b in json.loads(done.stdout)["streams"]] == ["0", "1"]
