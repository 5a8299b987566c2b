"""gfprobe_jax on real JAX (CPU): the recorded statistics against NumPy, and gfprobe's commands
on the files it writes. Gradients are computed with ``jax.grad`` outside the wrapper too, so each
recorded number is checked against an independent computation."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gfprobe_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from gfprobe.errors import ConfigError
from gfprobe.store.reader import StreamData, open_run
from gfprobe.store.schema import INT_STAT_FIELDS, STAT_FIELDS

GFPROBE = str(Path(sys.executable).with_name("gfprobe"))
Params = dict[str, Any]

# -- a small MLP on scikit-learn's digits -------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def init_mlp(seed: int = 0, sizes: tuple[int, ...] = (64, 32, 16, 10)) -> Params:
    """Flax's layout: ``{"params": {"Dense_0": {"kernel", "bias"}, ...}}``."""
    rng = np.random.default_rng(seed)
    layers = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        kernel = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        layers[f"Dense_{i}"] = {"kernel": jnp.asarray(kernel), "bias": jnp.full((n_out,), 0.01, jnp.float32)}
    return {"params": layers}


def loss_fn(params: Params, x: jax.Array, y: jax.Array, masks: Params | None = None) -> jax.Array:
    h = x
    layers = params["params"]
    for i in range(len(layers)):
        kernel = layers[f"Dense_{i}"]["kernel"]
        if masks is not None:  # a sparse network: masked weights take no part in the forward pass
            kernel = kernel * masks[f"Dense_{i}"]["kernel"]
        h = h @ kernel + layers[f"Dense_{i}"]["bias"]
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    loss: jax.Array = optax.softmax_cross_entropy_with_integer_labels(h, y).mean()
    return loss


grad_fn = jax.jit(jax.grad(loss_fn))


def random_masks(params: Params, density: float = 0.5, seed: int = 7) -> Params:
    """Masks for the kernels only (biases stay unmasked), in the parameters' own layout."""
    rng = np.random.default_rng(seed)
    return {name: {"kernel": rng.random(layer["kernel"].shape) < density}
            for name, layer in params["params"].items()}


def train(tx: optax.GradientTransformation, params: Params, data: tuple[np.ndarray, np.ndarray], steps: int,
          poison: Callable[[int, Params], Params] | None = None, sparse: Params | None = None,
          ) -> tuple[Params, list[list[np.ndarray]]]:
    """Train with minibatches of 32; returns the final parameters and each step's gradient leaves."""
    x, y = data
    state = tx.init(params)

    @jax.jit
    def apply(grads: Params, state: Any, params: Params) -> tuple[Params, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    seen = []
    for step in range(steps):
        rows = slice(32 * step % len(x), 32 * step % len(x) + 32)
        grads = grad_fn(params, x[rows], y[rows], sparse)
        if poison is not None:
            grads = poison(step, grads)
        seen.append([np.asarray(g, dtype=np.float64) for g in jax.tree_util.tree_leaves(grads)])
        params, state = apply(grads, state, params)
    return params, seen


# -- the reference: the ten statistics in NumPy -------------------------------------------------


def numpy_stats(grads: list[np.ndarray], masks: list[np.ndarray | None]) -> dict[str, np.ndarray]:
    """``{field: [P]}`` for one step, as SCIENCE.md and docs/run-file.md define them."""
    def four(g: np.ndarray) -> list[float]:
        a = np.abs(g)
        return [float(np.sum(a * a)), float(np.sum(a)), float(np.max(a)), float(np.count_nonzero(~np.isfinite(g)))]

    columns = []
    for g, m in zip(grads, masks, strict=True):
        effective = g if m is None else np.where(m, g, 0.0)
        columns.append([*four(g), *four(effective), float(g.size if m is None else np.count_nonzero(m)), 1.0])
    table = np.array(columns).T
    return {field: table[i] for i, field in enumerate(STAT_FIELDS)}


def assert_stats_equal(stream: StreamData, grads: list[list[np.ndarray]], masks: list[np.ndarray | None]) -> None:
    expected = [numpy_stats(g, masks) for g in grads]
    for field in STAT_FIELDS:
        want = np.array([e[field] for e in expected])
        got = stream.stats[field]
        if field in INT_STAT_FIELDS or field.endswith("max_abs"):  # counts and maxima are exact
            np.testing.assert_array_equal(got, want, err_msg=field)
        else:  # float32 sums on the device against float64 sums here
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, equal_nan=True, err_msg=field)


def leaf_masks(masks: Params | None, params: Params) -> list[np.ndarray | None]:
    """The masks in the parameters' leaf order (None for unmasked leaves)."""
    out: list[np.ndarray | None] = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        layer, leaf = path[-2].key, path[-1].key
        out.append(masks[layer]["kernel"] if masks is not None and leaf == "kernel" else None)
    return out


def egf_numpy(grads: list[list[np.ndarray]], masks: list[np.ndarray | None], kinds: list[str],
              p: int) -> np.ndarray:
    """Per step: (1/L) Σ_l ‖g^l ⊙ m^l‖_p over the L weight layers (SCIENCE.md §2)."""
    per_step = []
    for step in grads:
        norms = [np.linalg.norm((g if m is None else np.where(m, g, 0.0)).ravel(), p)
                 for g, m, kind in zip(step, masks, kinds, strict=True) if kind == "weight"]
        per_step.append(np.mean(norms))
    return np.array(per_step)


def gfprobe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", GFPROBE_WIDTH="120")
    return subprocess.run([GFPROBE, *args], capture_output=True, text=True, timeout=120, env=env)


# -- statistics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "mask-pytree"])
def test_recorded_statistics_equal_numpy(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray],
                                         masked: bool) -> None:
    params = init_mlp()
    masks = random_masks(params) if masked else None
    out = tmp_path / "run.h5"
    with gfprobe_jax.watch(optax.adam(1e-2), out=out, params=params, masks=masks, name="adam") as tx:
        _, grads = train(tx, params, digits, 6)
    with open_run(out) as run:
        stream = run.stream(0)
        assert run.metadata["status"] == "complete"
        assert run.metadata["framework"] == "jax"
        assert run.metadata["jax_version"] == jax.__version__
        assert stream.optimizer == "adam"
        assert stream.steps.tolist() == list(range(6))
        assert stream.params.names == ["Dense_0.bias", "Dense_0.kernel", "Dense_1.bias", "Dense_1.kernel",
                                       "Dense_2.bias", "Dense_2.kernel"]
        assert stream.params.kinds == ["bias", "weight"] * 3
        assert stream.params.shapes == [(32,), (64, 32), (16,), (32, 16), (10,), (16, 10)]
        expected_source = ["none", "explicit"] * 3 if masked else ["none"] * 6
        assert stream.params.mask_sources == expected_source
        assert_stats_equal(stream, grads, leaf_masks(masks, params))
    if masked:  # the masked statistics really differ: masked weights had non-zero gradients
        assert not np.allclose(stream.stats["masked_sumsq"][:, 1], stream.stats["sumsq"][:, 1])


def test_every_records_every_nth_update_inside_one_jitted_step(tmp_path: Path,
                                                               digits: tuple[np.ndarray, np.ndarray]) -> None:
    params = init_mlp(seed=1)
    x, y = digits
    out = tmp_path / "run.h5"
    tx = gfprobe_jax.watch(optax.sgd(0.1, momentum=0.9), out=out, params=params, every=3)
    state = tx.init(params)

    @jax.jit
    def step(params: Params, state: Any, x: jax.Array, y: jax.Array) -> tuple[Params, Any, Params]:
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    seen = []
    for i in range(10):
        params, state, grads = step(params, state, x[16 * i:16 * i + 16], y[16 * i:16 * i + 16])
        seen.append([np.asarray(g, dtype=np.float64) for g in jax.tree_util.tree_leaves(grads)])
    assert int(state.step) == 10
    assert tx.close() == out
    with open_run(out) as run:
        stream = run.stream(0)
        assert stream.steps.tolist() == [0, 3, 6, 9]
        assert_stats_equal(stream, [seen[i] for i in (0, 3, 6, 9)], [None] * 6)
        assert run.metadata["every"] == 3


def test_nonfinite_gradients_are_counted_raw_and_masked(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    params = init_mlp(seed=2)
    masks = random_masks(params)
    kernel0 = masks["Dense_0"]["kernel"]
    active_at, masked_at = np.argwhere(kernel0)[0], np.argwhere(~kernel0)[0]

    def poison(step: int, grads: Params) -> Params:
        if step not in (1, 3):
            return grads
        g = grads["params"]["Dense_0"]["kernel"]
        g = g.at[tuple(active_at)].set(jnp.nan).at[tuple(masked_at)].set(jnp.inf)  # one active, one masked
        bias = grads["params"]["Dense_2"]["bias"].at[0].set(-jnp.inf)
        layers = {**grads["params"], "Dense_0": {**grads["params"]["Dense_0"], "kernel": g},
                  "Dense_2": {**grads["params"]["Dense_2"], "bias": bias}}
        return {"params": layers}

    out = tmp_path / "run.h5"
    with gfprobe_jax.watch(optax.apply_if_finite(optax.adam(1e-3), 5), out=out, params=params, masks=masks) as tx:
        _, grads = train(tx, params, digits, 5, poison=poison)
    with open_run(out) as run:
        stream = run.stream(0)
        # Columns: Dense_0.bias, Dense_0.kernel, ..., Dense_2.bias (4).
        assert stream.stats["nonfinite"][:, 1].tolist() == [0, 2, 0, 2, 0]
        assert stream.stats["masked_nonfinite"][:, 1].tolist() == [0, 1, 0, 1, 0]  # the Inf is masked out
        assert stream.stats["nonfinite"][:, 4].tolist() == [0, 1, 0, 1, 0]
        assert np.isnan(stream.stats["sumsq"][1, 1]) and np.isfinite(stream.stats["sumsq"][2, 1])
        assert_stats_equal(stream, grads, leaf_masks(masks, params))
    result = gfprobe_cli("check", "--format", "json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    rules = {f["rule"]: f for f in json.loads(result.stdout)["runs"][0]["results"]}
    assert rules["nonfinite"]["status"] == "fail"
    assert rules["nonfinite"]["step"] == 1


def test_training_is_bit_for_bit_identical_with_and_without_the_wrapper(
        tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    plain, _ = train(optax.adamw(1e-2, weight_decay=1e-3), init_mlp(seed=3), digits, 8)
    with gfprobe_jax.watch(optax.adamw(1e-2, weight_decay=1e-3), out=tmp_path / "run.h5",
                           params=init_mlp(seed=3)) as tx:
        watched, _ = train(tx, init_mlp(seed=3), digits, 8)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(watched), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_records_the_gradient_the_wrapped_optimizer_consumes_inside_a_chain(
        tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Clipping before the watched optimizer: the file holds the clipped gradient."""
    params = init_mlp(seed=4)
    out = tmp_path / "run.h5"
    watched = gfprobe_jax.watch(optax.sgd(0.5), out=out, params=params)
    _, grads = train(optax.chain(optax.clip_by_global_norm(0.05), watched), params, digits, 3)
    watched.close()
    with open_run(out) as run:
        total = np.sqrt(run.stream(0).stats["sumsq"].sum(axis=1))
    raw = np.array([np.sqrt(sum(float(np.sum(g * g)) for g in step)) for step in grads])
    assert (raw > 0.05).all()  # so the clip did something
    np.testing.assert_allclose(total, 0.05, rtol=1e-5)


def test_names_and_kinds_come_from_the_pytree_paths(tmp_path: Path) -> None:
    params = {"layers": [{"w": jnp.ones((3, 4)), "b": jnp.ones(4)}, {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}],
              "LayerNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
              "embed": {"embedding": jnp.ones((5, 3))}, "temperature": jnp.ones(())}
    out = tmp_path / "run.h5"
    masks = {"layers.1.w": np.array([[1, 0], [0, 1], [1, 1], [0, 0]])}  # a flat {name: mask} mapping
    with gfprobe_jax.watch(optax.sgd(0.1), out=out, params=params, masks=masks) as tx:
        state = tx.init(params)
        grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 2.0), params)
        jax.jit(tx.update)(grads, state, params)
    with open_run(out) as run:
        table = run.params(0)
        kinds = dict(zip(table.names, table.kinds, strict=True))
        assert kinds == {"LayerNorm_0.bias": "norm", "LayerNorm_0.scale": "norm", "embed.embedding": "weight",
                         "layers.0.b": "bias", "layers.0.w": "weight", "layers.1.b": "bias", "layers.1.w": "weight",
                         "temperature": "other"}
        modules = dict(zip(table.names, table.module_types, strict=True))
        assert modules["LayerNorm_0.scale"] == "LayerNorm" and modules["layers.0.w"] == ""
        stream = run.stream(0)
        w1 = table.names.index("layers.1.w")
        assert table.mask_sources[w1] == "explicit"
        assert stream.stats["active"][0, w1] == 4
        assert stream.stats["masked_sumsq"][0, w1] == 4.0 * 4 and stream.stats["sumsq"][0, w1] == 4.0 * 8


def test_extra_update_arguments_reach_the_wrapped_optimizer(tmp_path: Path) -> None:
    """optax.lbfgs takes value, grad and value_fn, and finds the value in the (wrapped) state."""
    def quadratic(x: jax.Array) -> jax.Array:
        return jnp.sum((x - 3.0) ** 2)

    params = jnp.array([1.0, 2.0, 5.0])
    out = tmp_path / "run.h5"
    value_and_grad = optax.value_and_grad_from_state(quadratic)
    with gfprobe_jax.watch(optax.lbfgs(), out=out, params=params) as tx:
        state = tx.init(params)

        @jax.jit
        def step(params: jax.Array, state: Any) -> tuple[jax.Array, Any]:
            value, grad = value_and_grad(params, state=state)
            updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=quadratic)
            return optax.apply_updates(params, updates), state

        for _ in range(3):
            params, state = step(params, state)
    np.testing.assert_allclose(np.asarray(params), 3.0, rtol=1e-5)
    with open_run(out) as run:
        stream = run.stream(0)
        assert stream.params.names == ["param0"] and stream.params.kinds == ["other"]
        assert stream.stats["sumsq"][0, 0] == 16.0 + 4.0 + 16.0  # (2(x - 3))² at x = (1, 2, 5)


SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import gfprobe_jax
assert len(jax.devices()) == 2
rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
with gfprobe_jax.watch(optax.sgd(0.1), out=sys.argv[1], params=params) as tx:
    state = tx.init(params)
    grads = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), rows), "b": jax.device_put(jnp.ones(2), rows)}
    update = jax.jit(tx.update)
    for _ in range(3):
        updates, state = update(grads, state, params)
"""


def test_a_gradient_sharded_over_two_devices_is_recorded_whole_once_per_step(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    result = subprocess.run([sys.executable, "-c", SHARDED, str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open_run(out) as run:
        stream = run.stream(0)
        assert stream.steps.tolist() == [0, 1, 2]
        assert stream.stats["sumsq"].tolist() == [[2.0, 140.0]] * 3  # Σ 0²..7² = 140: both shards
        assert stream.stats["max_abs"][:, 1].tolist() == [7.0] * 3


UNDER_RECORD = """
import jax.numpy as jnp, optax
import gfprobe, gfprobe_jax
params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
tx = gfprobe_jax.watch(optax.sgd(0.1), params=params, attrs={"lr": 0.1})   # no out=, no every=
state = tx.init(params)
for step in range(6):
    grads = {"w": jnp.full((4, 2), float(step)), "b": jnp.ones(2)}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
gfprobe.log(final=1.0)
print("trained", float(params["b"][0]))
"""


def test_under_gfprobe_record_watch_writes_the_file_record_asked_for(tmp_path: Path) -> None:
    """``gfprobe record -- python jax_script.py``: the plugin's record hook gives ``watch`` the
    record's --out, --every and --attr, so the command reports and stamps the run as a torch one."""
    script = tmp_path / "train_jax.py"
    script.write_text(UNDER_RECORD)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)  # without gfprobe record, watch() writes run.h5 here
    out = tmp_path / "recorded.h5"
    result = gfprobe_cli("record", "--out", str(out), "--every", "2", "--attr", "seed=3", "--",
                         sys.executable, str(script))
    assert result.returncode == plain.returncode == 0, result.stderr
    assert result.stdout == plain.stdout == "trained -0.6000000238418579\n"
    assert f"recorded 3 steps of 1 weight layers to {out} (complete)" in result.stderr
    assert (tmp_path / "run.h5").exists()  # the plain run's own file, in its folder
    with open_run(out) as run:
        assert run.stream(0).steps.tolist() == [0, 2, 4]
        assert run.attrs == {"seed": 3, "lr": 0.1}
        assert run.metadata["framework"] == "jax" and run.metadata["exit_code"] == 0
        assert run.metrics()["final"].values.tolist() == [1.0]


def test_under_gfprobe_record_a_file_the_script_names_itself_is_the_records_too(tmp_path: Path) -> None:
    """``watch(tx, out="mine.h5")`` under ``gfprobe record --out other.h5``: the script's choice
    stands, and the record command reports, stamps and checks that file (it used to say the
    command never trained and exit 3)."""
    script = tmp_path / "train_jax.py"
    script.write_text(UNDER_RECORD.replace("params=params, attrs", "out='mine.h5', params=params, attrs"))
    result = subprocess.run([GFPROBE, "record", "--out", str(tmp_path / "other.h5"), "--check", "--", sys.executable,
                             str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=dict(os.environ, NO_COLOR="1"))
    assert result.returncode == 0, result.stderr
    mine = tmp_path / "mine.h5"
    assert f"recorded 6 steps of 1 weight layers to {mine} (complete)" in result.stderr
    assert "nonfinite" in result.stdout  # --check checked it
    assert not (tmp_path / "other.h5").exists()
    with open_run(mine) as run:
        assert run.metadata["exit_code"] == 0


# -- gfprobe's commands on the files, unchanged -------------------------------------------------


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory,
               digits: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple[Path, list[list[np.ndarray]], Params]]:
    """A sparse run whose forward pass applies the masks, so masked weights get zero gradient."""
    params = init_mlp(seed=5)
    masks = random_masks(params, density=0.3)
    out = tmp_path_factory.mktemp("cli") / "sparse.h5"
    with gfprobe_jax.watch(optax.adam(1e-2), out=out, params=params, masks=masks, attrs={"sparse": True}) as tx:
        _, grads = train(tx, params, digits, 15, sparse=masks)
        gfprobe_jax.log(test_acc=0.5, step=15)
    yield out, grads, masks


def test_report_json_gives_the_numpy_egf(sparse_run: tuple[Path, list[list[np.ndarray]], Params]) -> None:
    out, grads, masks = sparse_run
    params = init_mlp(seed=5)
    leaf = leaf_masks(masks, params)
    kinds = ["bias", "weight"] * 3
    for how, reduce in (("mean", np.mean), ("last", lambda v: v[-1])):
        result = gfprobe_cli("report", "--format", "json", "--summary", how, str(out))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        run = report["runs"][0]
        assert run["steps"] == 15 and run["layers"] == 3 and run["attrs"] == {"sparse": True}
        assert run["metrics"]["test_acc"]["last"] == 0.5
        for p in (1, 2):
            want = float(reduce(egf_numpy(grads, leaf, kinds, p)))
            assert run["measures"][f"egf_{p}"] == pytest.approx(want, rel=1e-5), (how, p)
        dense_gf_1 = float(reduce(np.array([sum(np.abs(g).sum() for g, k in zip(s, kinds, strict=True)
                                                    if k == "weight") for s in grads])))
        assert run["measures"]["gf_1"] == pytest.approx(dense_gf_1, rel=1e-5)


def test_check_passes_mask_leak_when_masked_weights_get_no_gradient(
        sparse_run: tuple[Path, list[list[np.ndarray]], Params]) -> None:
    out, _, _ = sparse_run
    result = gfprobe_cli("check", "--format", "json", str(out))
    assert result.returncode in (0, 1), result.stderr
    rules = {f["rule"]: f for f in json.loads(result.stdout)["runs"][0]["results"]}
    assert rules["nonfinite"]["status"] == "pass"
    assert rules["mask_leak"]["status"] == "pass"
    assert rules["mask_leak"]["message"] == "no gradient on the masked weights of 3 parameters"


def test_check_finds_the_mask_leak_of_a_loop_that_does_not_mask(
        tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    params = init_mlp(seed=6)
    out = tmp_path / "leaky.h5"
    with gfprobe_jax.watch(optax.sgd(0.1), out=out, params=params, masks=random_masks(params)) as tx:
        train(tx, params, digits, 3)
    result = gfprobe_cli("check", "--format", "json", str(out))
    assert result.returncode == 1
    rules = {f["rule"]: f for f in json.loads(result.stdout)["runs"][0]["results"]}
    assert rules["mask_leak"]["status"] == "fail"
    assert "at 3 of 3 steps" in rules["mask_leak"]["message"]


def test_plot_draws_the_run(tmp_path: Path, sparse_run: tuple[Path, list[list[np.ndarray]], Params]) -> None:
    out, _, _ = sparse_run
    figure = tmp_path / "layers.png"
    result = gfprobe_cli("plot", "--kind", "layers", "--out", str(figure), str(out))
    assert result.returncode == 0, result.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- never in the way of training ---------------------------------------------------------------


def test_an_unwritable_out_warns_and_training_goes_on(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    out = blocker / "run.h5"
    plain, _ = train(optax.adam(1e-2), init_mlp(seed=8), digits, 4)
    with caplog.at_level(logging.WARNING, logger="gfprobe"):
        tx = gfprobe_jax.watch(optax.adam(1e-2), out=out, params=init_mlp(seed=8))
        watched, _ = train(tx, init_mlp(seed=8), digits, 4)
        assert tx.close() is None
    assert "not recording" in caplog.text and "not-a-folder" in caplog.text
    assert tx.path is None and not out.exists()
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(watched), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_pytree_other_than_params_is_not_recorded_and_not_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {"w": jnp.ones((2, 2))}
    with caplog.at_level(logging.WARNING, logger="gfprobe"):
        tx = gfprobe_jax.watch(optax.sgd(0.1), out=tmp_path / "run.h5", params=params)
        other = {"v": jnp.ones((3, 3))}
        state = tx.init(other)
        updates, state = jax.jit(tx.update)({"v": jnp.ones((3, 3))}, state)
        tx.close()
    assert "differ from the recorded parameters" in caplog.text
    np.testing.assert_allclose(np.asarray(updates["v"]), -0.1)
    assert tx.path is None  # no step recorded: no file


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every": 0}, r"every=0"),
    ({"every": 2.5}, r"every=2\.5"),
    ({"masks": {"Dense_9": {"kernel": np.ones((64, 32))}}}, r"names parameters that params= does not hold: "
                                                            r"Dense_9\.kernel; known names: Dense_0\.bias"),
    ({"masks": {"Dense_0": {"kernel": np.ones((32, 64))}}}, r"mask for Dense_0\.kernel has shape \(32, 64\), "
                                                            r"the parameter \(64, 32\)"),
], ids=["every-zero", "every-float", "unknown-mask", "mask-shape"])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        gfprobe_jax.watch(optax.sgd(0.1), out=tmp_path / "run.h5", params=init_mlp(), **kwargs)
    assert not list(tmp_path.iterdir())


def test_tx_must_be_a_transformation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tx must be an optax GradientTransformation .*got function"):
        gfprobe_jax.watch(optax.adam, out=tmp_path / "run.h5")


# -- the run's end, in a real interpreter -------------------------------------------------------

SCRIPT = """
import sys
import jax, jax.numpy as jnp, optax
import gfprobe, gfprobe_jax
params = {{"Dense_0": {{"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}}
tx = gfprobe_jax.watch(optax.sgd(0.1), out=sys.argv[1], params=params)
state = tx.init(params)
update = jax.jit(tx.update)
for step in range(5):
    grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, float(step)), params)
    updates, state = update(grads, state, params)
gfprobe.log(loss=0.25)
{end}
"""


@pytest.mark.parametrize(("end", "status"), [("", "complete"), ("raise RuntimeError('boom')", "failed")],
                         ids=["exit", "uncaught-exception"])
def test_the_run_is_closed_at_exit(tmp_path: Path, end: str, status: str) -> None:
    out = tmp_path / "run.h5"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT.format(end=end)), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == (0 if status == "complete" else 1), result.stderr
    with open_run(out) as run:
        assert run.metadata["status"] == status
        stream = run.stream(0)
        assert stream.steps.tolist() == [0, 1, 2, 3, 4]
        assert stream.stats["sum_abs"][:, 1].tolist() == [0.0, 6.0, 12.0, 18.0, 24.0]  # Dense_0.kernel: 6 entries
        assert run.metrics()["loss"].values.tolist() == [0.25]


def test_the_entry_point_is_registered_and_light() -> None:
    code = ("import sys; from importlib.metadata import entry_points; "
            "(ep,) = [e for e in entry_points(group='gfprobe') if e.name == 'jax']; "
            "module = ep.load(); "
            "print(ep.value, module.name, 'jax' in sys.modules, 'optax' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gfprobe_jax.plugin", "jax", "False", "False"]
