"""The run attributes a study's run file carries, and which of them an existing file disagrees
with. Imports no torch: the runner compares files with the study before anything trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gfprobe.study import capacity, names
from gfprobe.study.config import RunSpec

# Attributes that name a run but do not set it up: a study renamed keeps its finished runs.
NOT_COMPARED = frozenset({"study"})


def run_attrs(spec: RunSpec, plan: capacity.PairPlan) -> dict[str, Any]:
    """The run attributes stored in the file: every setting, plus the capacity of the pair.

    A sparse run and its dense partner differ only in ``sparse``, ``width`` and ``density``
    (and ``seed`` across repeats); ``active_weights`` is equal within a pair by construction.
    ``samples`` and ``test_fraction`` are there for the data sets that have them (mnist1d, digits).
    """
    return {
        "study": spec.study, "dataset": spec.dataset, "arch": spec.arch,
        **({"hidden_layers": spec.hidden_layers} if spec.arch == "mlp" else {}),
        "sparse": spec.sparse, "density": spec.density if spec.sparse else 1.0,
        "width": spec.sparse_width if spec.sparse else plan.dense_width,
        "sparse_width": spec.sparse_width, "dense_width": plan.dense_width,
        "pair_density": spec.density, "active_weights": plan.dense_active_total,
        "optimizer": spec.optimizer, "lr": spec.lr, "regularisation": spec.regularisation,
        "activation": spec.activation, "seed": spec.seed, "epochs": spec.epochs,
        "batch_size": spec.batch_size, "weight_decay": spec.weight_decay if "L2" in spec.regularisers else 0.0,
        "init": spec.init,
        **({"samples": spec.samples, "test_fraction": spec.test_fraction} if spec.samples is not None else {}),
        "probe_every": spec.probe_every, "probe_batch": spec.probe_batch,
    }


def changed_settings(recorded: Mapping[str, Any], spec: RunSpec) -> list[str]:
    """The settings of ``spec`` that a run file's attributes ``recorded`` hold another value of, as
    ``name = recorded -> now`` (empty: the file is ``spec``'s run).

    A setting the file does not record is not compared: it was written before gfprobe recorded
    that setting, when its value was the default (the run id names every other value).
    """
    plan = capacity.plan_pair(spec.arch, names.DATASETS[spec.dataset], spec.sparse_width, spec.density,
                              spec.hidden_layers)
    expected = run_attrs(spec, plan)
    return [f"{key} = {recorded[key]!r} -> {value!r}" for key, value in expected.items()
            if key not in NOT_COMPARED and key in recorded and recorded[key] != value]
