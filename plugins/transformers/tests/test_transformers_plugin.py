"""The Transformers plugin with a real ``Trainer`` on CPU (tiny BERT, synthetic data).

One module-scoped fixture runs ``transformers_plugin_script.py`` five ways, concurrently (each
child uses one thread; importing transformers dominates): plainly; under ``gfprobe record``
with no gfprobe code and no ``--metric``; under ``gfprobe record`` with a ``GfprobeCallback``
already given to the Trainer; with ``gfprobe.watch`` and a ``GfprobeCallback()``; and with
``GfprobeCallback(out=...)``, which records by itself. The script saves
``trainer.state.log_history``, the independent account of what the Trainer logged, and every
test compares a run file against it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gfprobe_transformers._values import numeric, training_attrs

from gfprobe.store.reader import open_run

SCRIPT = Path(__file__).with_name("transformers_plugin_script.py")
MAX_STEPS = 6  # the script's optimizer steps (gradient accumulation of 2)
SECRET = "hf_secret_do_not_store"  # the script's hub_token
HF_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
          "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
Triple = tuple[str, int, float]
# The tests that need the Trainer runs (about 35 s of CPU time, once per module), as in gfprobe's
# own tests/test_stacks_hf.py.
slow = pytest.mark.slow


@dataclass
class Run:
    """One run of the script: how it ended, what it printed, what it saved, its run file."""

    returncode: int
    stdout: str
    stderr: str
    saved: dict[str, Any]
    out: Path


def child_env(**extra: str) -> dict[str, str]:
    """Deterministic children (one thread, offline) in which installed plugins are loaded."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1", **HF_ENV)
    env.update(extra)
    for name in ("GFPROBE_RECORD", "GFPROBE_DISABLE_PLUGINS"):
        env.pop(name, None)
    return env


def record_command(out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "gfprobe", "record", "--out", str(out), *options, "--"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    folder = tmp_path_factory.mktemp("transformers_plugin")
    script = [sys.executable, str(SCRIPT)]
    ways = {
        "plain": ([*script], []),
        # --attr seed=7: the user's attribute must win over TrainingArguments.seed (0).
        "recorded": ([*record_command(folder / "recorded.h5", "--attr", "seed=7"), *script], []),
        "explicit": ([*record_command(folder / "explicit.h5"), *script], ["--explicit"]),
        "watched": ([*script], ["--watch", str(folder / "watched.h5")]),
        "self": ([*script], ["--out", str(folder / "self.h5")]),
    }
    procs = {}
    for name, (command, options) in ways.items():
        # Output to files: a full pipe would block a child while another is waited for.
        with (folder / f"{name}.stdout").open("w") as out, (folder / f"{name}.stderr").open("w") as err:
            # transformers' warnings shown where a test looks for one (a duplicate callback)
            env = child_env(TRANSFORMERS_VERBOSITY="warning") if name == "explicit" else child_env()
            procs[name] = subprocess.Popen([*command, *options, "--save", str(folder / f"{name}.json")],
                                           stdout=out, stderr=err, cwd=folder, env=env)
    try:
        codes = {name: proc.wait(timeout=240) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    result = {}
    for name, code in codes.items():
        stderr = (folder / f"{name}.stderr").read_text()
        assert code == 0, f"{name} run failed:\n{stderr}"
        result[name] = Run(code, (folder / f"{name}.stdout").read_text(), stderr,
                           json.loads((folder / f"{name}.json").read_text()), folder / f"{name}.h5")
    yield result


# -- helpers ---------------------------------------------------------------------------------
def logged(saved: dict[str, Any]) -> list[Triple]:
    """What the Trainer logged (``log_history``) as sorted (name, step, value), each point once."""
    points = {(name, int(entry["step"]), float(value))
              for entry in saved["log_history"] for name, value in entry.items()
              if name != "step" and isinstance(value, int | float) and not isinstance(value, bool)}
    return sorted(points)


def recorded(path: Path) -> list[Triple]:
    """A run file's metrics as sorted (name, step, value), duplicates kept."""
    with open_run(path) as run:
        metrics = run.metrics()
    return sorted((name, int(step), float(value)) for name, metric in metrics.items()
                  for step, value in zip(metric.steps, metric.values, strict=True))


def without_timings(stdout: str) -> str:
    """The Trainer's printed logs with their wall-clock values (runtime, throughput) blanked."""
    return re.sub(r"'(\w*(?:runtime|per_second))': '[^']*'", r"'\1': _", stdout)


def assert_run_file_complete(path: Path) -> None:
    """A finished run: status complete, one optimizer, one gradient row per optimizer step."""
    with open_run(path) as run:
        assert run.metadata["status"] == "complete"
        assert run.n_streams == 1
        np.testing.assert_array_equal(run.stream(0).steps, np.arange(MAX_STEPS))


# -- the plugin, without a Trainer -----------------------------------------------------------
def test_plugin_module_imports_neither_transformers_nor_torch() -> None:
    code = "import sys, gfprobe_transformers.plugin; print(sorted({'transformers', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    assert done.stdout.strip() == "[]"


def test_plugin_is_found_through_its_entry_point() -> None:
    code = ("import json; from gfprobe.plugin.manager import installed; "
            "print(json.dumps([[p.name, p.distribution, list(p.hooks), p.error] for p in installed()]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    plugins = {name: (dist, hooks, error) for name, dist, hooks, error in json.loads(done.stdout)}
    assert plugins["transformers"] == ("gfprobe-transformers", ["gfprobe_record_started"], None)


@pytest.mark.parametrize(("logs", "expected"), [
    pytest.param({"loss": 0.5, "epoch": 1, "step_ok": np.float32(0.25)}, {"loss": 0.5, "epoch": 1.0, "step_ok": 0.25},
                 id="numbers"),
    pytest.param({"flag": True, "note": "text", "none": None, "list": [1.0], "nested": {"a": 1.0}}, {},
                 id="non-numbers-left-out"),
    pytest.param({"nan": math.nan}, {"nan": math.nan}, id="nan-kept"),
], )
def test_numeric_keeps_numbers_only(logs: dict[str, Any], expected: dict[str, float]) -> None:
    got = numeric(logs)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == value or (math.isnan(got[name]) and math.isnan(value))


def test_training_attrs_leave_out_secrets_and_unset_arguments() -> None:
    attrs = training_attrs({"learning_rate": 0.1, "hub_token": SECRET, "push_to_hub_token": SECRET,
                            "wandb_api_key": SECRET, "include_num_input_tokens_seen": "no", "resume": None,
                            "report_to": ["none"], "accelerator_config": {"split_batches": False, "x": None}})
    assert attrs == {"learning_rate": 0.1, "include_num_input_tokens_seen": "no", "report_to": ["none"],
                     "accelerator_config": {"split_batches": False, "x": None}}


# -- a Trainer script with no gfprobe code, under gfprobe record ----------------------------
@slow
def test_recorded_metrics_equal_what_the_trainer_logged(runs: dict[str, Run]) -> None:
    run = runs["recorded"]
    expected = logged(run.saved)
    names = {name for name, _, _ in expected}
    assert {"loss", "grad_norm", "learning_rate", "epoch", "eval_loss", "eval_accuracy", "total_flos"} <= names
    assert recorded(run.out) == expected


@slow
def test_recorded_metric_steps_count_optimizer_steps(runs: dict[str, Run]) -> None:
    """logging_steps=2, eval_steps=3: the Trainer's global_step, i.e. optimizer steps taken."""
    steps = {name: sorted({step for n, step, _ in recorded(runs["recorded"].out) if n == name})
             for name in ("loss", "eval_accuracy", "train_loss")}
    assert steps == {"loss": [2, 4, 6], "eval_accuracy": [3, 6], "train_loss": [MAX_STEPS]}
    assert runs["recorded"].saved["global_step"] == MAX_STEPS


@slow
def test_recorded_attrs_hold_training_arguments_and_model(runs: dict[str, Run]) -> None:
    run = runs["recorded"]
    with open_run(run.out) as opened:
        attrs = opened.attrs
    assert attrs["learning_rate"] == run.saved["learning_rate"] == 3e-3
    assert attrs["per_device_train_batch_size"] == run.saved["per_device_train_batch_size"] == 8
    assert attrs["gradient_accumulation_steps"] == 2
    assert attrs["eval_strategy"] == "steps"
    assert attrs["report_to"] == []
    assert attrs["seed"] == 7  # given with --attr; the script's TrainingArguments say 0
    assert attrs["data_seed"] == 0
    assert attrs["model_type"] == "bert"
    assert attrs["model_class"] == "BertForSequenceClassification"
    assert attrs["num_parameters"] == run.saved["num_parameters"]
    assert "hub_token" not in attrs
    assert SECRET not in json.dumps(attrs)


@slow
def test_recorded_run_is_complete(runs: dict[str, Run]) -> None:
    assert_run_file_complete(runs["recorded"].out)


@slow
def test_output_exit_code_and_weights_unchanged(runs: dict[str, Run]) -> None:
    plain, recorded_run = runs["plain"], runs["recorded"]
    assert recorded_run.returncode == plain.returncode == 0
    assert "weights-checksum" in plain.stdout
    assert without_timings(recorded_run.stdout) == without_timings(plain.stdout)
    assert recorded_run.saved["log_history"][0] == plain.saved["log_history"][0]


@slow
def test_every_trainer_gets_one_callback_under_record(runs: dict[str, Run]) -> None:
    assert (runs["plain"].saved["callbacks"], runs["plain"].saved["late_callbacks"]) == (0, 0)
    assert (runs["recorded"].saved["callbacks"], runs["recorded"].saved["late_callbacks"]) == (1, 1)


# -- a Trainer that already has the callback --------------------------------------------------
@slow
def test_a_trainer_given_the_callback_gets_no_second_one(runs: dict[str, Run]) -> None:
    run = runs["explicit"]
    # One passed to the constructor; one added with add_callback replaces the automatic one.
    assert (run.saved["callbacks"], run.saved["late_callbacks"]) == (1, 1)
    assert recorded(run.out) == logged(run.saved)  # a second callback would store every value twice
    assert "but there is already one" not in run.stderr  # transformers' duplicate-callback warning


# -- without gfprobe record -------------------------------------------------------------------
@slow
@pytest.mark.parametrize("way", ["watched", "self"], ids=["gfprobe.watch+callback", "callback-out"])
def test_callback_without_record(runs: dict[str, Run], way: str) -> None:
    run = runs[way]
    assert run.out.exists(), run.stderr
    assert_run_file_complete(run.out)
    assert recorded(run.out) == logged(run.saved)
    with open_run(run.out) as opened:
        assert opened.attrs["learning_rate"] == 3e-3
        assert opened.attrs["model_type"] == "bert"
    assert "gfprobe" not in run.stderr, run.stderr


@slow
def test_callback_with_out_finalises_its_file_when_training_ends(runs: dict[str, Run]) -> None:
    assert runs["self"].saved["status_after_train"] == "complete"  # read by the script after train()
