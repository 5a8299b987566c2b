"""The sparse and dense networks of an SC-SDC pair (SCIENCE.md §4), built from a ``PairPlan``.

Module names are stable and match the plan's layer names, so parameter names read
``fc1.weight`` … ``out.weight`` (MLP) or ``conv1.weight`` … ``fc.weight`` (CNN); block i's
BatchNorm, activation and pooling are ``bn{i}``, ``act{i}`` and ``pool{i}``.

Every random draw (masks, weights, biases) uses the caller's generator and nothing else, so a
seed reproduces a model exactly and building never moves torch's global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gfprobe.errors import ConfigError
from gfprobe.study.capacity import CNN_POOL_AFTER, LayerPlan, PairPlan
from gfprobe.study.names import ACTIVATIONS, INITS, DatasetInfo

_WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d


@dataclass(frozen=True)
class ModelOptions:
    """The grid's model switches (SCIENCE.md §4): activation, BatchNorm, skip connections, init."""

    activation: str = "relu"
    batch_norm: bool = False
    skip: bool = False  # identity residuals around blocks whose input and output shapes match
    init: str = "dense"  # "dense": S's active weights as D's; "sparsity-aware": scaled by active fan-in

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")


@dataclass
class Built:
    """A built network and its masks: ``{parameter name: bool mask}``, empty for a dense model.

    Both are on the CPU; ``keep_masked_weights_zero`` copies the masks to wherever the model goes.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]


class SReLU(nn.Module):
    """S-shaped ReLU (Jin et al. 2016) with learnable parameters per feature (dim 1, as BatchNorm).

    f(x) = t_r + a_r (x − t_r) for x ≥ t_r;  x for t_l < x < t_r;  t_l + a_l (x − t_l) for x ≤ t_l.
    Starts at t_l = 0, a_l = 0.01, t_r = 1, a_r = 1: a leaky ReLU until training moves it.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.t_left = nn.Parameter(torch.empty(num_features))
        self.a_left = nn.Parameter(torch.empty(num_features))
        self.t_right = nn.Parameter(torch.empty(num_features))
        self.a_right = nn.Parameter(torch.empty(num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the initial values (deterministic)."""
        with torch.no_grad():
            self.t_left.fill_(0.0)
            self.a_left.fill_(0.01)
            self.t_right.fill_(1.0)
            self.a_right.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        tl, al = self.t_left.view(shape), self.a_left.view(shape)
        tr, ar = self.t_right.view(shape), self.a_right.view(shape)
        return torch.where(x >= tr, tr + ar * (x - tr), torch.where(x <= tl, tl + al * (x - tl), x))

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


@dataclass(frozen=True)
class _Block:
    layer: str
    norm: str | None
    act: str | None  # None for the output layer
    residual: bool
    pool: str | None


class _Net(nn.Module):
    """Blocks in order: layer → [norm] → [+ input] → activation → [pool]; the last is the head."""

    def __init__(self, flatten_input: bool) -> None:
        super().__init__()
        self.flatten_input = flatten_input
        self.blocks: tuple[_Block, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_input:
            x = x.flatten(1)
        for block in self.blocks:
            if block.act is None:  # the head: the CNN's feature maps are flattened before it
                x = x.flatten(1)
            y = self.get_submodule(block.layer)(x)
            if block.norm is not None:
                y = self.get_submodule(block.norm)(y)
            if block.residual:
                y = y + x
            if block.act is not None:
                y = self.get_submodule(block.act)(y)
            if block.pool is not None:
                y = self.get_submodule(block.pool)(y)
            x = y
        return x


def build(plan: PairPlan, sparse: bool, dataset: DatasetInfo, options: ModelOptions,
          generator: torch.Generator) -> Built:
    """Build the sparse or the dense network of a pair, on the CPU.

    The dense model is initialised as PyTorch does by default (weights and biases
    U(±1/sqrt(fan_in))), drawn from ``generator``. The sparse model gets, per weight layer, a
    mask with exactly ``dense_active`` ones placed uniformly at random; masked weights are 0.
    With ``init="dense"`` its active weights and its biases follow the paired dense layer's
    distribution (the dense fan-in). With ``init="sparsity-aware"`` each output unit's active
    weights are U(±1/sqrt(k_j)), k_j its active inputs (× kernel positions), and biases stay as
    with ``"dense"``.

    Args:
        plan: The pair, from ``capacity.plan_pair`` for this data set.
        sparse: Build S (True) or D (False).
        dataset: The data set; inputs are ``[N, *dataset.shape]``.
        options: Activation, BatchNorm, skip connections and init.
        generator: A CPU generator; every random draw comes from it.

    Raises:
        ConfigError: The plan does not fit the data set, or the generator is not on the CPU.
    """
    _check(plan, dataset, generator)
    with torch.device("meta"):  # no memory and no draws from the global generator
        model = _mlp(plan, sparse, options) if plan.arch == "mlp" else _cnn(plan, sparse, options)
    model = model.to_empty(device="cpu")
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if not isinstance(module, _WeightLayer) and callable(reset):
            reset()  # BatchNorm, PReLU, SReLU: deterministic
    masks: dict[str, torch.Tensor] = {}
    for layer_plan in plan.layers:
        layer = model.get_submodule(layer_plan.name)
        assert isinstance(layer, _WeightLayer)
        mask = _init_layer(layer, layer_plan, sparse, options.init, generator)
        if mask is not None:
            masks[f"{layer_plan.name}.weight"] = mask
    return Built(model, masks)


def keep_masked_weights_zero(model: nn.Module, masks: dict[str, torch.Tensor],
                             optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """Zero the masked weights after every optimizer step; returns the hook's handle.

    The weights, not the gradients, are masked: gradients stay the true dense gradients
    (gfprobe records them), and masked weights stay exactly 0 whatever the optimizer adds
    (momentum, weight decay, adaptive steps). Masks follow the weights to their device.

    Raises:
        ConfigError: A mask names no parameter of ``model`` or has another shape.
    """
    params = dict(model.named_parameters())
    pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
    for name, mask in masks.items():
        if name not in params:
            raise ConfigError(f"mask {name!r} names no parameter of the model: pass the masks that build() "
                              "returned with this model")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ConfigError(f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has "
                              f"{tuple(params[name].shape)}: pass the masks that build() returned with this model")
        pairs.append((params[name], mask.to(torch.bool)))
    return optimizer.register_step_post_hook(_MaskKeeper(pairs))


class _MaskKeeper:
    """The step post-hook; keeps each inverted mask on its weight's device."""

    def __init__(self, pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
        self.params = [p for p, _ in pairs]
        self.masked = [~m for _, m in pairs]

    def __call__(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if self.masked[i].device != p.device:  # once, after the model moved
                    self.masked[i] = self.masked[i].to(p.device)
                p.masked_fill_(self.masked[i], 0.0)


def _check(plan: PairPlan, dataset: DatasetInfo, generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ConfigError(f"the generator is on {generator.device}: models are built on the CPU, so pass a CPU "
                          "generator (torch.Generator().manual_seed(seed)) and move the model afterwards")
    first, last = plan.layers[0], plan.layers[-1]
    if plan.arch == "mlp":
        expected, got, what = dataset.features, first.dense_shape[1], "input features"
    else:
        expected, got, what = dataset.shape[0], first.dense_shape[1], "input channels"
        if len(first.dense_shape) - 2 != len(dataset.shape) - 1:
            expected, got, what = len(dataset.shape) - 1, len(first.dense_shape) - 2, "spatial dimensions"
    if got != expected:
        raise ConfigError(f"the plan has {got} {what} but data set {dataset.name!r} has {expected}: plan the pair "
                          "for this data set with plan_pair(arch, dataset, ...)")
    if last.dense_shape[0] != dataset.classes:
        raise ConfigError(f"the plan has {last.dense_shape[0]} outputs but data set {dataset.name!r} has "
                          f"{dataset.classes} classes: plan the pair for this data set with plan_pair(...)")


def _shape(layer: LayerPlan, sparse: bool) -> tuple[int, ...]:
    return layer.sparse_shape if sparse else layer.dense_shape


def _activation(name: str, features: int) -> nn.Module:
    # PReLU gets one slope per feature/channel, like SReLU (and Keras' default), not torch's single slope.
    makers: dict[str, Any] = {
        "relu": nn.ReLU, "elu": nn.ELU, "swish": nn.SiLU, "sigmoid": nn.Sigmoid,
        "prelu": lambda: nn.PReLU(features), "srelu": lambda: SReLU(features),
    }
    module: nn.Module = makers[name]()
    return module


def _mlp(plan: PairPlan, sparse: bool, options: ModelOptions) -> _Net:
    net = _Net(flatten_input=True)
    blocks: list[_Block] = []
    for i, layer in enumerate(plan.layers[:-1], start=1):
        out_features, in_features = _shape(layer, sparse)
        net.add_module(layer.name, nn.Linear(in_features, out_features))
        if options.batch_norm:
            net.add_module(f"bn{i}", nn.BatchNorm1d(out_features))
        net.add_module(f"act{i}", _activation(options.activation, out_features))
        # Hidden layers 2..H map width to width in both S and D.
        blocks.append(_Block(layer.name, f"bn{i}" if options.batch_norm else None, f"act{i}",
                             options.skip and i >= 2, None))
    head = plan.layers[-1]
    out_features, in_features = _shape(head, sparse)
    net.add_module(head.name, nn.Linear(in_features, out_features))
    net.blocks = (*blocks, _Block(head.name, None, None, False, None))
    return net


def _cnn(plan: PairPlan, sparse: bool, options: ModelOptions) -> _Net:
    net = _Net(flatten_input=False)
    blocks: list[_Block] = []
    for i, layer in enumerate(plan.layers[:-1], start=1):
        shape = _shape(layer, sparse)
        out_ch, in_ch, kernel = shape[0], shape[1], shape[2:]
        two_d = len(kernel) == 2
        conv = nn.Conv2d if two_d else nn.Conv1d
        net.add_module(layer.name, conv(in_ch, out_ch, kernel[0], padding=kernel[0] // 2))
        if options.batch_norm:
            net.add_module(f"bn{i}", (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(out_ch))
        net.add_module(f"act{i}", _activation(options.activation, out_ch))
        if i in CNN_POOL_AFTER:
            net.add_module(f"pool{i}", (nn.MaxPool2d if two_d else nn.MaxPool1d)(2))
        # Skip only where both S and D keep the channel count, so the pair has the same topology.
        same = all(s[0] == s[1] for s in (layer.sparse_shape, layer.dense_shape))
        blocks.append(_Block(layer.name, f"bn{i}" if options.batch_norm else None, f"act{i}",
                             options.skip and same, f"pool{i}" if i in CNN_POOL_AFTER else None))
    head = plan.layers[-1]
    out_features, in_features = _shape(head, sparse)
    net.add_module(head.name, nn.Linear(in_features, out_features))
    net.blocks = (*blocks, _Block(head.name, None, None, False, None))
    return net


def _init_layer(layer: nn.Linear | nn.Conv1d | nn.Conv2d, plan: LayerPlan, sparse: bool, init: str,
                generator: torch.Generator) -> torch.Tensor | None:
    """Initialise one weight layer in place; return its mask (None for a dense layer)."""
    # PyTorch's default (kaiming_uniform with a=sqrt(5)) is U(±1/sqrt(fan_in)) for weights and biases;
    # the sparse layer uses its dense partner's fan-in.
    bound = 1.0 / math.sqrt(plan.dense_fan_in)
    weight = layer.weight
    with torch.no_grad():
        mask = _random_mask(tuple(weight.shape), plan.dense_active, generator) if sparse else None
        if mask is not None and init == "sparsity-aware":
            active_in = mask.flatten(1).sum(dim=1).to(weight.dtype)
            unit_bound = torch.where(active_in > 0, active_in.clamp(min=1).rsqrt(), torch.zeros_like(active_in))
            weight.uniform_(-1.0, 1.0, generator=generator).mul_(unit_bound.view(-1, *[1] * (weight.dim() - 1)))
        else:
            weight.uniform_(-bound, bound, generator=generator)
        if mask is not None:
            weight.masked_fill_(~mask, 0.0)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)
    return mask


def _random_mask(shape: tuple[int, ...], active: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``active`` ones, uniformly among all positions."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:active]] = True
    return mask.view(shape)
