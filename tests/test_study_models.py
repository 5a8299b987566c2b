"""The SC-SDC networks (SCIENCE.md §4): shapes, masks, init, options, and masks kept through training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from gfprobe.errors import ConfigError
from gfprobe.study.capacity import PairPlan, plan_pair
from gfprobe.study.models import Built, ModelOptions, SReLU, build, keep_masked_weights_zero
from gfprobe.study.names import ACTIVATIONS, DATASETS

MNIST1D, DIGITS = DATASETS["mnist1d"], DATASETS["digits"]
ARCHS = [
    pytest.param("mlp", "mnist1d", id="mlp-mnist1d"),
    pytest.param("mlp", "digits", id="mlp-digits"),
    pytest.param("cnn", "mnist1d", id="cnn1d-mnist1d"),
    pytest.param("cnn", "digits", id="cnn2d-digits"),
]


def make(arch: str, dataset: str, sparse: bool = True, width: int = 16, density: float = 0.3, seed: int = 0,
         hidden: int = 2, **options: object) -> tuple[PairPlan, Built]:
    plan = plan_pair(arch, DATASETS[dataset], width, density, hidden_layers=hidden)
    built = build(plan, sparse, DATASETS[dataset], ModelOptions(**options),  # type: ignore[arg-type]
                  torch.Generator().manual_seed(seed))
    return plan, built


def weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(f"{name}.weight").detach()


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize(("arch", "dataset"), ARCHS)
def test_weight_shapes_are_the_plans(arch: str, dataset: str, sparse: bool) -> None:
    plan, built = make(arch, dataset, sparse=sparse)
    for layer in plan.layers:
        assert tuple(weight(built.model, layer.name).shape) == (layer.sparse_shape if sparse else layer.dense_shape)


@pytest.mark.parametrize("density", [0.1, 0.5, 1.0], ids=lambda d: f"d{d}")
@pytest.mark.parametrize(("arch", "dataset"), ARCHS)
def test_masks_have_exactly_the_dense_count_and_masked_weights_are_zero(arch: str, dataset: str,
                                                                        density: float) -> None:
    plan, built = make(arch, dataset, width=20, density=density)
    assert list(built.masks) == [f"{layer.name}.weight" for layer in plan.layers]
    for layer in plan.layers:
        mask, w = built.masks[f"{layer.name}.weight"], weight(built.model, layer.name)
        assert mask.dtype == torch.bool
        assert mask.shape == w.shape
        assert int(mask.sum()) == layer.dense_active
        assert torch.all(w[~mask] == 0)
        assert int((w[mask] != 0).sum()) == layer.dense_active  # active weights are drawn, not left at 0


@pytest.mark.parametrize(("arch", "dataset"), ARCHS)
def test_dense_models_have_no_masks(arch: str, dataset: str) -> None:
    assert make(arch, dataset, sparse=False)[1].masks == {}


@pytest.mark.parametrize("skip", [False, True], ids=["noskip", "skip"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("arch", "dataset"), [ARCHS[0], ARCHS[2], ARCHS[3]])
def test_forward_and_backward_for_every_option(arch: str, dataset: str, activation: str, batch_norm: bool,
                                               skip: bool) -> None:
    _, built = make(arch, dataset, width=8, activation=activation, batch_norm=batch_norm, skip=skip)
    x = torch.randn(4, *DATASETS[dataset].shape, generator=torch.Generator().manual_seed(1))
    y = built.model(x)
    assert y.shape == (4, DATASETS[dataset].classes)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in built.model.parameters())


def test_mlp_parameter_names() -> None:
    _, built = make("mlp", "digits", activation="prelu", batch_norm=True, hidden=2)
    assert [name for name, _ in built.model.named_parameters()] == [
        "fc1.weight", "fc1.bias", "bn1.weight", "bn1.bias", "act1.weight",
        "fc2.weight", "fc2.bias", "bn2.weight", "bn2.bias", "act2.weight",
        "out.weight", "out.bias",
    ]
    assert built.model.get_parameter("act1.weight").shape == (16,)  # PReLU: one slope per unit


def test_cnn_parameter_names() -> None:
    _, built = make("cnn", "digits", activation="srelu")
    names = [name for name, _ in built.model.named_parameters()]
    assert [n for n in names if n.endswith(".weight")] == [f"conv{i}.weight" for i in range(1, 6)] + ["fc.weight"]
    assert "act3.t_left" in names
    assert "act3.a_right" in names


def uniform_std(bound: float) -> float:
    return bound / math.sqrt(3)


def test_dense_init_is_pytorchs_default() -> None:
    plan, built = make("mlp", "fashion-mnist", sparse=False, width=1000, density=0.3)
    for layer in plan.layers[:2]:
        w = weight(built.model, layer.name)
        bound = 1 / math.sqrt(layer.dense_shape[1])
        assert w.abs().max() <= bound
        assert float(w.std()) == pytest.approx(uniform_std(bound), rel=0.02)


def test_sparse_active_weights_follow_the_dense_layers_distribution() -> None:
    plan, sparse = make("mlp", "fashion-mnist", width=1000, density=0.3)
    _, dense = make("mlp", "fashion-mnist", sparse=False, width=1000, density=0.3, seed=1)
    for layer in plan.layers[:2]:  # fc1: 784 -> 1000 (dense 300), fc2: 1000 -> 1000 (dense 300 -> 300)
        active = weight(sparse.model, layer.name)[sparse.masks[f"{layer.name}.weight"]]
        bound = 1 / math.sqrt(layer.dense_fan_in)
        assert active.abs().max() <= bound
        assert float(active.std()) == pytest.approx(uniform_std(bound), rel=0.02)
        assert float(active.std()) == pytest.approx(float(weight(dense.model, layer.name).std()), rel=0.03)
        assert float(active.mean()) == pytest.approx(0.0, abs=0.05 * bound)
        bias = sparse.model.get_parameter(f"{layer.name}.bias")
        assert bias.abs().max() <= bound
        assert bias.abs().max() > 0.9 * bound  # the dense fan-in, not the sparse one (bound would be smaller)


def test_sparsity_aware_init_scales_each_unit_by_its_active_fan_in() -> None:
    plan, built = make("mlp", "fashion-mnist", width=400, density=0.1, init="sparsity-aware")
    for layer in plan.layers:
        w, mask = weight(built.model, layer.name), built.masks[f"{layer.name}.weight"]
        k = mask.sum(dim=1)
        if layer.name == "fc2":  # hidden-to-hidden at 1% density: some units get no input at all
            assert bool((k == 0).any())
        assert torch.all(w[k == 0] == 0)
        scaled = (w * k.clamp(min=1).sqrt()[:, None])[mask]  # U(-1, 1) if each unit used 1/sqrt(k_j)
        assert scaled.abs().max() <= 1 + 1e-6
        if scaled.numel() > 5000:
            assert float(scaled.std()) == pytest.approx(uniform_std(1.0), rel=0.03)


def test_sparsity_aware_init_on_conv_counts_kernel_positions() -> None:
    _, built = make("cnn", "digits", width=32, density=0.5, init="sparsity-aware")
    w, mask = weight(built.model, "conv3"), built.masks["conv3.weight"]
    k = mask.flatten(1).sum(dim=1)
    per_unit_max = (w.flatten(1).abs().max(dim=1).values * k.sqrt())
    assert torch.all(per_unit_max <= 1 + 1e-6)
    assert float(per_unit_max.min()) > 0.5  # each unit reaches near its own bound, so k_j is the right scale


def state(built: Built) -> Iterator[tuple[str, torch.Tensor]]:
    yield from built.model.state_dict().items()
    yield from built.masks.items()


@pytest.mark.parametrize("init", ["dense", "sparsity-aware"])
@pytest.mark.parametrize(("arch", "dataset"), [ARCHS[0], ARCHS[3]])
def test_same_seed_same_model_and_global_rng_untouched(arch: str, dataset: str, init: str) -> None:
    rng = torch.get_rng_state()
    _, a = make(arch, dataset, seed=7, init=init, batch_norm=True, activation="srelu")
    _, b = make(arch, dataset, seed=7, init=init, batch_norm=True, activation="srelu")
    _, c = make(arch, dataset, seed=8, init=init, batch_norm=True, activation="srelu")
    assert torch.equal(torch.get_rng_state(), rng)
    for (name, x), (_, y) in zip(state(a), state(b), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(weight(a.model, "fc" if arch == "cnn" else "out"),
                           weight(c.model, "fc" if arch == "cnn" else "out"))
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2),
}


def train(arch: str, dataset: str, optimizer: str, hook: bool, steps: int = 20) -> tuple[Built, int, Built]:
    """Train a sparse model; returns it, the steps where some masked gradient was non-zero, and its start."""
    _, built = make(arch, dataset, width=16, density=0.3, batch_norm=True)
    _, start = make(arch, dataset, width=16, density=0.3, batch_norm=True)
    opt = OPTIMIZERS[optimizer](list(built.model.parameters()))
    if hook:
        keep_masked_weights_zero(built.model, built.masks, opt)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, *DATASETS[dataset].shape, generator=g)
    y = torch.randint(0, DATASETS[dataset].classes, (32,), generator=g)
    masked_grad_steps = 0
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(built.model(x), y).backward()
        grads = [built.model.get_parameter(n).grad for n in built.masks]
        masked_grad_steps += any(bool((grad[~built.masks[n]] != 0).any())  # type: ignore[index]
                                 for grad, n in zip(grads, built.masks, strict=True))
        opt.step()
    return built, masked_grad_steps, start


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize(("arch", "dataset"), [ARCHS[1], ARCHS[2]])
def test_masked_weights_stay_exactly_zero_through_training(arch: str, dataset: str, optimizer: str) -> None:
    built, masked_grad_steps, start = train(arch, dataset, optimizer, hook=True)
    assert masked_grad_steps == 20  # the gradient is the true dense one, never masked
    for name, mask in built.masks.items():
        w = built.model.get_parameter(name)
        assert torch.all(w[~mask] == 0), name
        assert not torch.equal(w[mask], start.model.get_parameter(name)[mask]), name  # training did move them


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_without_the_hook_masked_weights_move(optimizer: str) -> None:
    built, _, _ = train("mlp", "digits", optimizer, hook=False)
    assert any(bool((built.model.get_parameter(n)[~m] != 0).any()) for n, m in built.masks.items())


def test_removing_the_hook_stops_it() -> None:
    _, built = make("mlp", "digits")
    opt = torch.optim.SGD(built.model.parameters(), lr=0.1)
    handle = keep_masked_weights_zero(built.model, built.masks, opt)
    handle.remove()
    built.model(torch.randn(8, *DIGITS.shape)).square().sum().backward()
    opt.step()
    assert any(bool((built.model.get_parameter(n)[~m] != 0).any()) for n, m in built.masks.items())


def test_hook_rejects_masks_of_another_model() -> None:
    _, built = make("mlp", "digits")
    opt = torch.optim.SGD(built.model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"mask 'fc9\.weight' names no parameter of the model"):
        keep_masked_weights_zero(built.model, {"fc9.weight": torch.ones(2, 2, dtype=torch.bool)}, opt)
    with pytest.raises(ConfigError, match=r"mask 'fc1\.weight' has shape \(2, 2\) but the parameter has \(16, 64\)"):
        keep_masked_weights_zero(built.model, {"fc1.weight": torch.ones(2, 2, dtype=torch.bool)}, opt)


def outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach())) for n in names]
    model(x)
    for h in handles:
        h.remove()
    return seen


def zero_layer(model: nn.Module, name: str) -> None:
    with torch.no_grad():
        model.get_parameter(f"{name}.weight").zero_()
        model.get_parameter(f"{name}.bias").zero_()


@pytest.mark.parametrize("hidden", [2, 4])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
def test_mlp_skip_is_an_identity_around_hidden_layers_from_the_second(skip: bool, hidden: int) -> None:
    _, built = make("mlp", "digits", skip=skip, hidden=hidden)
    for i in range(1, hidden + 1):
        zero_layer(built.model, f"fc{i}")
    with torch.no_grad():
        built.model.get_parameter("fc1.bias").fill_(0.5)
    acts = [f"act{i}" for i in range(1, hidden + 1)]
    seen = outputs(built.model, acts, torch.randn(4, *DIGITS.shape))
    assert torch.all(seen["act1"] == 0.5)
    for name in acts[1:]:  # relu(0 + x) = x with the skip, relu(0) = 0 without
        assert torch.all(seen[name] == (0.5 if skip else 0.0)), name


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
def test_cnn_skip_only_where_channels_match(skip: bool) -> None:
    _, built = make("cnn", "digits", width=32, density=0.5, skip=skip)
    for name in ("conv1", "conv2", "conv3"):
        zero_layer(built.model, name)
    with torch.no_grad():
        built.model.get_parameter("conv2.bias").fill_(0.5)
    seen = outputs(built.model, ["act1", "act2", "pool2", "act3"], torch.randn(4, *DIGITS.shape))
    assert torch.all(seen["act1"] == 0)  # 1 -> 32 channels: never a residual
    assert torch.all(seen["act2"] == 0.5)  # 32 -> 64: never a residual
    assert torch.equal(seen["act3"], seen["pool2"] if skip else torch.zeros_like(seen["pool2"]))  # 64 -> 64


@pytest.mark.parametrize(("x", "expected"), [
    (-3.0, -1.2), (-1.0, -1.0), (-0.5, -0.5), (0.0, 0.0), (1.5, 1.5), (2.0, 2.0), (4.0, 3.0),
], ids=["below-t_l", "at-t_l", "between-neg", "zero", "between-pos", "at-t_r", "above-t_r"])
def test_srelu_piecewise(x: float, expected: float) -> None:
    act = SReLU(2)
    with torch.no_grad():
        act.t_left.fill_(-1.0)
        act.a_left.fill_(0.1)
        act.t_right.fill_(2.0)
        act.a_right.fill_(0.5)
    out = act(torch.full((1, 2), x))
    assert out[0].tolist() == pytest.approx([expected, expected], abs=1e-6)


def test_srelu_starts_as_a_leaky_relu_per_channel() -> None:
    act = SReLU(3)
    assert [act.t_left[0].item(), act.a_left[0].item(), act.t_right[0].item(), act.a_right[0].item()] == \
        pytest.approx([0.0, 0.01, 1.0, 1.0])
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0]).repeat(2, 3, 1)  # [N, C, L]
    assert torch.allclose(act(x), nn.functional.leaky_relu(x, 0.01))
    with torch.no_grad():
        act.a_right[1] = 2.0
    out = act(x)
    assert out[0, 1, 3].item() == pytest.approx(1 + 2 * 2)  # only channel 1 changed
    assert out[0, 0, 3].item() == pytest.approx(3.0)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in act.parameters())


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(activation="tanh"), r"unknown activation 'tanh': use one of relu, prelu, elu, swish, srelu, sigmoid"),
    (dict(init="kaiming"), r"unknown init 'kaiming': use one of dense, sparsity-aware"),
], ids=["activation", "init"])
def test_model_options_are_validated(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("arch", "planned", "used", "match"), [
    ("mlp", "mnist1d", "digits", r"the plan has 40 input features but data set 'digits' has 64: plan the pair"),
    ("cnn", "mnist1d", "digits", r"the plan has 1 spatial dimensions but data set 'digits' has 2"),
    ("cnn", "cifar10", "digits", r"the plan has 3 input channels but data set 'digits' has 1"),
    ("mlp", "cifar10", "cifar100", r"the plan has 10 outputs but data set 'cifar100' has 100 classes"),
], ids=["mlp-features", "cnn-dims", "cnn-channels", "classes"])
def test_build_rejects_a_plan_for_another_dataset(arch: str, planned: str, used: str, match: str) -> None:
    plan = plan_pair(arch, DATASETS[planned], 8, 0.5)
    with pytest.raises(ConfigError, match=match):
        build(plan, True, DATASETS[used], ModelOptions(), torch.Generator().manual_seed(0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hook_follows_the_model_to_the_gpu() -> None:
    _, built = make("cnn", "digits", batch_norm=True)
    model = built.model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-2)
    keep_masked_weights_zero(model, built.masks, opt)  # masks still on the CPU
    x, y = torch.randn(16, *DIGITS.shape, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, mask in built.masks.items():
        assert torch.all(model.get_parameter(name)[~mask.cuda()] == 0), name
