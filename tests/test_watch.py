"""gfprobe.watch: the Python API, on real training loops and real run files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import gfprobe
from gfprobe.store.reader import open_run


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 4))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=gen)
        y = torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD, torch.optim.AdamW])
def test_training_is_bit_for_bit_identical_with_and_without_the_probe(
        tmp_path: Path, optimizer: Callable[..., torch.optim.Optimizer]) -> None:
    plain = make_model()
    opt_plain = optimizer(plain.parameters(), lr=0.01)
    train(plain, opt_plain, 25)

    probed = make_model()
    opt_probed = optimizer(probed.parameters(), lr=0.01)
    with gfprobe.watch(probed, opt_probed, out=tmp_path / "run.h5"):
        train(probed, opt_probed, 25)

    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream(0).steps.tolist() == list(range(25))


def test_parameter_table_names_kinds_and_modules(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5", attrs={"sparse": False, "seed": 3}):
        train(model, opt, 2)
    with open_run(tmp_path / "run.h5") as run:
        params = run.params(0)
        assert params.names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
        assert params.kinds == ["weight", "bias", "norm", "norm", "weight", "bias"]
        assert params.module_types[:3] == ["Linear", "Linear", "BatchNorm1d"]
        assert run.attrs == {"sparse": False, "seed": 3}
        assert run.metadata["status"] == "complete"
        assert run.metadata["schema_version"] == 1


def test_statistics_equal_the_gradient_the_optimizer_consumed(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[torch.Tensor] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(model[0].weight.grad.clone()))
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        train(model, opt, 3)
    with open_run(tmp_path / "run.h5") as run:
        s = run.stream(0)
    for step, grad in enumerate(seen):
        np.testing.assert_allclose(s.stats["sumsq"][step, 0], (grad**2).sum().item(), rtol=1e-5)
        np.testing.assert_allclose(s.stats["sum_abs"][step, 0], grad.abs().sum().item(), rtol=1e-5)
        assert s.stats["max_abs"][step, 0] == pytest.approx(grad.abs().max().item(), rel=1e-6)
        assert s.stats["nonfinite"][step, 0] == 0
        assert s.stats["has_grad"][step, 0] == 1


def test_prune_masks_are_detected_and_gradients_already_masked(tmp_path: Path) -> None:
    model = make_model()
    prune.random_unstructured(model[0], "weight", amount=0.75)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        train(model, opt, 3)
    with open_run(tmp_path / "run.h5") as run:
        s = run.stream(0)
    col = s.params.names.index("0.weight")
    assert s.params.mask_sources[col] == "prune"
    assert s.stats["active"][:, col].tolist() == [int(model[0].weight_mask.sum())] * 3
    np.testing.assert_array_equal(s.stats["masked_sumsq"][:, col], s.stats["sumsq"][:, col])


def test_explicit_masks_separate_raw_from_effective_gradient(tmp_path: Path) -> None:
    model = make_model()
    mask = torch.zeros_like(model[0].weight)
    mask[:, :6] = 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5", masks={"0.weight": mask}):
        opt.zero_grad()
        model(torch.randn(16, 12)).sum().backward()
        grad = model[0].weight.grad.clone()
        opt.step()
    with open_run(tmp_path / "run.h5") as run:
        s = run.stream(0)
    assert s.params.mask_sources[0] == "explicit"
    assert s.stats["active"][0, 0] == 24 * 6
    np.testing.assert_allclose(s.stats["sumsq"][0, 0], (grad**2).sum().item(), rtol=1e-5)
    np.testing.assert_allclose(s.stats["masked_sumsq"][0, 0], ((grad * mask) ** 2).sum().item(), rtol=1e-5)
    assert s.stats["masked_sumsq"][0, 0] < s.stats["sumsq"][0, 0]


def test_zeros_convention_masks_weights_that_start_at_zero(tmp_path: Path) -> None:
    model = make_model()
    with torch.no_grad():
        model[3].weight[:, ::2] = 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5", masks="zeros"):
        train(model, opt, 2)
    with open_run(tmp_path / "run.h5") as run:
        s = run.stream(0)
    col = s.params.names.index("3.weight")
    assert s.params.mask_sources[col] == "zeros"
    assert s.stats["active"][0, col] == 4 * 12
    assert s.params.mask_sources[s.params.names.index("0.bias")] == "none"  # 1-D: never a mask


def test_torch_ao_pruning_parametrization_is_detected(tmp_path: Path) -> None:
    from torch.ao.pruning import WeightNormSparsifier

    model = make_model()
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=4)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        train(model, opt, 2)
    with open_run(tmp_path / "run.h5") as run:
        s = run.stream(0)
    col = s.params.names.index("0.weight")
    assert s.params.mask_sources[col] == "parametrize"
    assert s.stats["active"][0, col] == 24 * 12 // 2


def test_every_and_custom_schedules(tmp_path: Path) -> None:
    for every, expected in [(3, [0, 3, 6, 9]), (gfprobe.every(4, offset=2), [2, 6]),
                            (lambda step: step in (1, 7), [1, 7])]:
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}.h5"
        with gfprobe.watch(model, opt, out=out, every=every):
            train(model, opt, 10)
        with open_run(out) as run:
            assert run.stream(0).steps.tolist() == expected


def test_bad_every_is_rejected_at_watch_time(tmp_path: Path) -> None:
    with pytest.raises(gfprobe.GfprobeError, match="every=0"):
        gfprobe.watch(make_model(), out=tmp_path / "r.h5", every=0)


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=out) as probe:
        train(model, opt, 2)
    assert out.read_bytes() == b"precious"
    assert probe.path is not None and probe.path != out and probe.path.exists()


def test_model_filter_ignores_other_optimizers(tmp_path: Path) -> None:
    model, other = make_model(0), make_model(1)
    opt, opt_other = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, other))
    with gfprobe.watch(model, out=tmp_path / "run.h5"):
        train(other, opt_other, 3)
        train(model, opt, 2)
    with open_run(tmp_path / "run.h5") as run:
        assert run.n_streams == 1
        assert run.stream(0).steps.tolist() == [0, 1]


def test_each_optimizer_is_its_own_stream(tmp_path: Path) -> None:
    gen, disc = make_model(0), make_model(1)
    opt_g, opt_d = torch.optim.Adam(gen.parameters()), torch.optim.SGD(disc.parameters(), lr=0.1)
    with gfprobe.watch(None, out=tmp_path / "gan.h5"):
        for _ in range(3):
            train(disc, opt_d, 2)
            train(gen, opt_g, 1)
    with open_run(tmp_path / "gan.h5") as run:
        assert run.stream_names() == ["SGD", "Adam"]
        assert run.stream(0).steps.tolist() == list(range(6))
        assert run.stream(1).steps.tolist() == list(range(3))
        assert run.stream(1).stats["sumsq"].shape == (3, 6)
        assert np.isfinite(run.stream(1).stats["sumsq"]).all()


def test_log_records_metrics_and_is_a_noop_without_a_probe(tmp_path: Path) -> None:
    gfprobe.log(test_acc=0.5)  # nothing records: silently ignored
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        train(model, opt, 4)
        gfprobe.log(test_acc=0.25, test_loss=torch.tensor(1.5))
        gfprobe.log(step=100, test_acc=0.75)
    with open_run(tmp_path / "run.h5") as run:
        metrics = run.metrics()
    assert metrics["test_acc"].steps.tolist() == [4, 100]
    assert metrics["test_acc"].values.tolist() == [0.25, 0.75]
    assert metrics["test_loss"].values.tolist() == [1.5]


def test_log_rejects_non_numbers(tmp_path: Path) -> None:
    with gfprobe.watch(make_model(), out=tmp_path / "run.h5"), \
            pytest.raises(gfprobe.GfprobeError, match="test_acc='high' is not a number"):
        gfprobe.log(test_acc="high")  # type: ignore[arg-type]


def test_internal_failure_is_logged_once_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="gfprobe"):
        probe = gfprobe.watch(model, opt, out=blocker / "run.h5")  # a valid path when watch() checks it
        blocker.write_text("a file where the run's folder should be")  # ... and no longer at the first step
        train(model, opt, 400)  # several flushes: each would fail if recording went on
        probe.close()
    failures = [r for r in caplog.records if "recording stopped" in r.getMessage()]
    assert len(failures) == 1
    assert not (blocker / "run.h5").exists()


def test_unknown_mask_name_stops_recording_not_training(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="gfprobe"), \
            gfprobe.watch(model, opt, out=tmp_path / "run.h5", masks={"nope.weight": torch.ones(1)}):
        train(model, opt, 3)
    assert any("nope.weight" in r.getMessage() for r in caplog.records)


def test_hooks_are_removed_on_close(tmp_path: Path) -> None:
    original_step = torch.amp.GradScaler.step
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        assert torch.amp.GradScaler.step is not original_step
        train(model, opt, 2)
    assert torch.amp.GradScaler.step is original_step
    train(model, opt, 2)  # not recorded any more
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream(0).steps.size == 2


def test_secondary_rank_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        train(model, opt, 2)
    assert not (tmp_path / "run.h5").exists()


def test_run_is_readable_while_it_is_being_written(tmp_path: Path) -> None:
    from gfprobe.adapters import torch_probe

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = gfprobe.watch(model, opt, out=tmp_path / "run.h5")
    train(model, opt, torch_probe.BATCH_STEPS + 5)  # one batch reaches the file
    deadline = time.monotonic() + 10  # the writer thread flushes the batch soon after
    while True:
        with open_run(tmp_path / "run.h5") as run:
            seen = run.stream(0).steps.size
            status = run.metadata["status"]
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # A batch is flushed when it fills or FLUSH_SECONDS pass, whichever comes first.
    assert 0 < seen <= torch_probe.BATCH_STEPS + 5
    assert status == "running"
    probe.close()
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream(0).steps.size == torch_probe.BATCH_STEPS + 5
        assert run.metadata["status"] == "complete"


def test_bug_internal_failure_mid_run_finalises_the_file_with_the_steps_before_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a failure in the hot path used to leave the file unfinalised ('running')."""

    def schedule(step: int) -> bool:  # user code running inside the probe: fails at step 5
        return 1 / (5 - step) != 0

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="gfprobe"), \
            gfprobe.watch(model, opt, out=tmp_path / "run.h5", every=schedule):
        train(model, opt, 10)  # recording fails at step 5; training goes on
    assert sum("recording stopped" in r.getMessage() for r in caplog.records) == 1
    with open_run(tmp_path / "run.h5") as run:
        assert run.metadata["status"] == "failed"
        assert "ZeroDivisionError" in run.metadata["error"]
        assert run.stream(0).steps.tolist() == [0, 1, 2, 3, 4]


def test_bug_rows_of_an_optimizer_collected_before_close_are_kept(tmp_path: Path) -> None:
    """Regression: streams are keyed weakly by optimizer; an optimizer garbage-collected before
    close() (a local of a script's main(), as under 'gfprobe record') lost its unflushed rows."""
    import gc

    model, other = make_model(0), make_model(1)

    def train_with_a_local_optimizer() -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train(model, opt, 7)

    probe = gfprobe.watch(None, out=tmp_path / "run.h5")
    train_with_a_local_optimizer()
    train(other, torch.optim.SGD(other.parameters(), lr=0.1), 2)  # the probe's last-fired reference moves on
    gc.collect()
    probe.close()
    with open_run(tmp_path / "run.h5") as run:
        assert run.stream(0).steps.tolist() == list(range(7))
        assert run.stream(1).steps.tolist() == [0, 1]


def test_active_counts_follow_a_mask_replaced_twice_between_recorded_steps(tmp_path: Path) -> None:
    """Pruning again frees the old mask; a cache keyed by id() alone can see the next mask at the
    freed mask's address, with the same version, and keep a stale count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    prune.random_unstructured(model[0], "weight", amount=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5", every=3):
        for step in range(12):
            if step % 3:  # twice between recorded steps: a new weight_mask each time, the old one freed
                model[0].weight_mask = (torch.rand(24, 12) > 0.1 * step).float()
            else:
                expected.append(int(model[0].weight_mask.count_nonzero()))
            train(model, opt, 1, seed=step)
    with open_run(tmp_path / "run.h5") as run:
        stream, params = run.stream(0), run.params(0)
        column = params.names.index("0.weight")
        assert params.mask_sources[column] == "prune"
        assert stream.stats["active"][:, column].tolist() == expected
        assert len(set(expected)) == 4


class _KeepMask(nn.Module):
    """A parametrization with a ``mask`` (as torch.ao.pruning's FakeSparsity has)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def test_pruning_that_starts_mid_training_is_taken_up_at_the_next_step(tmp_path: Path) -> None:
    """Gradual pruning: the optimizer was first seen unpruned; every step after a prune (or a
    parametrization with a mask) counts the active weights of its new mask, and the parameter
    table says which kind of mask the weight has."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected_first, expected_last = [], []
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for step in range(9):
            if step == 3:
                prune.l1_unstructured(model[0], "weight", amount=0.5)
            if step == 6:
                prune.l1_unstructured(model[0], "weight", amount=0.25)  # prunes again: a new mask
                keep = (torch.arange(96).reshape(4, 24) % 4 != 0).float()
                torch.nn.utils.parametrize.register_parametrization(model[2], "weight", _KeepMask(keep))
            expected_first.append(int(model[0].weight_mask.count_nonzero()) if step >= 3 else 288)
            expected_last.append(72 if step >= 6 else 96)
            train(model, opt, 1, seed=step)
    with open_run(tmp_path / "run.h5") as run:
        params, active = run.params(0), run.stream(0).stats["active"]
        first, last = params.names.index("0.weight"), params.names.index("2.weight")
        assert (params.mask_sources[first], params.mask_sources[last]) == ("prune", "parametrize")
        assert active[:, first].tolist() == expected_first
        assert active[:, last].tolist() == expected_last
        assert len(set(expected_first)) == 3
