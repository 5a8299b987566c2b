"""The plugin mechanism: entry points in the ``gfprobe`` group, pluggy hooks, broken plugins.

Each fake plugin here is a real installed distribution: a module and a ``.dist-info`` folder with
its entry point, in a folder put on the path, so discovery goes through importlib.metadata as it
does for a pip-installed plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, SCRIPTS, THREE_STEPS, child_env, forget_plugins, record
from torch import nn

import gfprobe
import gfprobe.api as gfapi
from gfprobe.bootstrap.imports import after_import
from gfprobe.plugin import found
from gfprobe.store.reader import open_run


def install_plugin(site: Path, name: str, source: str, dist: str | None = None, version: str = "1.2.3") -> None:
    """Install module ``gfp_<name>`` as distribution ``dist`` announcing entry point ``name``."""
    dist = dist or f"gfp-{name}"
    module = f"gfp_{name.replace('-', '_')}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[gfprobe]\n{name} = {module}\n")


GOOD = """
    import click
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_commands():
        @click.command()
        def hello():
            "Say hello from a plugin."
            click.echo("hello from a plugin")

        @click.command()
        def report():
            click.echo("a plugin's report")

        return [hello, report]

    @gfprobe.hookimpl
    def gfprobe_record_started(recording):
        recording.set_attrs({"plugin_saw_every": recording.every})
        recording.after_import("torch", lambda torch: gfprobe.log(step=0, plugin_metric=1.5))
"""
IMPORT_ERROR = "import a_module_that_does_not_exist\n"
BAD_SIGNATURE = """
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_module_masks(modul):
        return None
"""
UNKNOWN_HOOK = """
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_record_startd(recording):
        pass
"""
RAISES = """
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_record_started(recording):
        raise RuntimeError("the plugin's own bug")

    @gfprobe.hookimpl
    def gfprobe_module_masks(module):
        raise RuntimeError("the plugin's own bug")
"""


# The plugins installed in this environment (Lightning's, ...): left out, so that each test sees
# gfprobe's built-in plugin and its own fake ones only.
INSTALLED = ",".join(sorted(entry.name for entry in entry_points(group=found.GROUP))) or "none"


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    return child_env(PYTHONPATH=str(site), **{found.DISABLE_ENV: INSTALLED, **extra})


def run_gfprobe(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfprobe", *args], capture_output=True, text=True, timeout=120,
                          env=plugin_env(site, **env))


def listed(site: Path, **env: str) -> tuple[dict[str, dict[str, object]], str]:
    result = run_gfprobe(site, "plugins", "--format", "json", **env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}, result.stderr


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


# -- discovery and listing -----------------------------------------------------------------------
def test_plugins_lists_builtin_and_installed_plugins_with_their_hooks(site: Path) -> None:
    install_plugin(site, "good", GOOD)
    plugins, stderr = listed(site)
    assert stderr == ""
    assert plugins["good"] == {"name": "good", "distribution": "gfp-good", "version": "1.2.3", "builtin": False,
                               "status": "loaded", "hooks": ["gfprobe_commands", "gfprobe_record_started"],
                               "error": None}
    assert plugins["torch-masks"]["builtin"] is True
    assert plugins["torch-masks"]["hooks"] == ["gfprobe_module_masks"]
    table = run_gfprobe(site, "plugins")
    assert table.returncode == 0
    assert "gfp-good" in table.stdout and "gfprobe_record_started" in table.stdout


@pytest.mark.parametrize(("source", "why"), [
    (IMPORT_ERROR, "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"),
    (BAD_SIGNATURE, "PluginValidationError"),
    (UNKNOWN_HOOK, "unknown hook 'gfprobe_record_startd'"),
])
def test_a_broken_plugin_is_named_in_one_warning_line_and_skipped(site: Path, source: str, why: str) -> None:
    install_plugin(site, "broken", source)
    install_plugin(site, "good", GOOD)
    plugins, stderr = listed(site)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gfprobe: plugin 'broken' (gfp-broken 1.2.3) skipped: ")
    assert why in lines[0]
    assert plugins["broken"]["status"] == "skipped" and why in str(plugins["broken"]["error"])
    assert plugins["good"]["status"] == "loaded"  # the others still work
    hello = run_gfprobe(site, "hello")
    assert hello.returncode == 0 and hello.stdout == "hello from a plugin\n"


def test_disabled_plugins_are_listed_and_never_imported(site: Path) -> None:
    install_plugin(site, "broken", IMPORT_ERROR)
    install_plugin(site, "good", GOOD)
    plugins, stderr = listed(site, GFPROBE_DISABLE_PLUGINS="broken, good")
    assert stderr == ""  # the broken one was never imported
    assert plugins["broken"]["status"] == plugins["good"]["status"] == "disabled"
    assert plugins["torch-masks"]["status"] == "loaded"
    assert run_gfprobe(site, "hello", GFPROBE_DISABLE_PLUGINS="all").returncode == 2  # no such command


# -- commands -----------------------------------------------------------------------------------
def test_a_plugin_adds_commands_but_cannot_replace_a_builtin_one(site: Path) -> None:
    install_plugin(site, "good", GOOD)
    hello = run_gfprobe(site, "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello from a plugin\n")
    help_text = run_gfprobe(site, "--help").stdout
    assert "hello" in help_text and "Say hello from a plugin." in help_text
    assert "a plugin's report" not in help_text
    report = run_gfprobe(site, "report", "--help")
    assert report.returncode == 0 and "Summarise gradient flow" in report.stdout


# -- under gfprobe record ---------------------------------------------------------------------
def test_record_started_hook_sets_attributes_and_logs_on_import_of_torch(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "good", GOOD)
    out = tmp_path / "run.h5"
    result = record(out, "train_mlp.py", options=["--every", "2"], env=plugin_env(site))
    assert result.returncode == 0, result.stderr
    with open_run(out) as run:
        assert run.attrs["plugin_saw_every"] == 2
        metric = run.metrics()["plugin_metric"]
        assert metric.steps.tolist() == [0] and metric.values.tolist() == [1.5]


def plain_and_recorded(site: Path, out: Path, name: str, source: str) -> tuple[
        subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``train_mlp.py`` run plainly, then under ``gfprobe record`` with plugin ``name`` installed."""
    script = [sys.executable, str(SCRIPTS / "train_mlp.py")]
    plain = subprocess.run(script, capture_output=True, text=True, timeout=120, env=child_env())
    install_plugin(site, name, source)
    return plain, record(out, "train_mlp.py", env=plugin_env(site))


def test_a_plugin_that_raises_never_changes_the_training(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    plain, result = plain_and_recorded(site, out, "raises", RAISES)
    assert result.returncode == plain.returncode == 0
    assert result.stdout == plain.stdout
    warnings = [line for line in result.stderr.splitlines() if "'raises'" in line]
    assert warnings and all("RuntimeError: the plugin's own bug" in line for line in warnings)
    with open_run(out) as run:
        assert run.metadata["status"] == "complete" and run.stream(0).steps.size > 0


# -- masks ----------------------------------------------------------------------------------------
MASKS = """
    import gfprobe
    from gfprobe.plugin import ModuleMask

    @gfprobe.hookimpl
    def gfprobe_module_masks(module):
        keep = getattr(module, "keep", None)
        if keep is None:
            return None
        return [ModuleMask("weight", module.weight, lambda: module.keep, "blocksparse", grad_is_masked=False)]
"""


class KeepLinear(nn.Linear):
    """A layer that applies its own mask in forward, as block-sparse kernels do: torch's prune and
    parametrize know nothing of it, a plugin does."""

    def __init__(self, n_in: int, n_out: int, keep: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.keep, self.bias)


@pytest.fixture
def plugins_from(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process's plugins, found afresh on ``site`` (and forgotten after the test)."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(found.DISABLE_ENV, INSTALLED)
    forget_plugins()
    yield site
    forget_plugins()


def train_keep_model(out: Path, keep: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(KeepLinear(6, 4, keep), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfprobe.watch(model, opt, out=out):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 6)).sum().backward()
            opt.step()
    return model


def test_a_plugin_supplies_the_masks_of_a_module_torch_knows_nothing_of(plugins_from: Path, tmp_path: Path) -> None:
    install_plugin(plugins_from, "masks", MASKS)
    keep = (torch.arange(24).reshape(4, 6) % 3 == 0).float()
    train_keep_model(tmp_path / "run.h5", keep)
    with open_run(tmp_path / "run.h5") as run:
        params, stream = run.params(0), run.stream(0)
        assert params.mask_sources[0] == "blocksparse" and params.names[0] == "0.weight"
        active = stream.stats["active"][:, 0]
        assert active.tolist() == [int(keep.sum())] * 3
        # The forward masks the gradient too: the raw and the masked sums agree.
        np.testing.assert_allclose(stream.stats["masked_sumsq"][:, 0], stream.stats["sumsq"][:, 0], rtol=1e-6)


def test_a_mask_hook_that_raises_leaves_the_builtin_masks(plugins_from: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    install_plugin(plugins_from, "raises", RAISES)
    keep = torch.ones(4, 6)
    model = train_keep_model(tmp_path / "run.h5", keep)
    failures = [r.getMessage() for r in caplog.records if "'raises'" in r.getMessage()]
    assert failures == ["gfprobe: plugin 'raises' failed in gfprobe_module_masks: RuntimeError: the plugin's own bug"]
    with open_run(tmp_path / "run.h5") as run:
        assert run.params(0).mask_sources == ["none"] * 4
        assert run.stream(0).steps.tolist() == [0, 1, 2]
    assert isinstance(model[0], KeepLinear)


# -- measures ---------------------------------------------------------------------------------------
MEASURES_PLUGIN = """
    import numpy as np
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_measures():
        return {
            "widest_layer_l2": lambda stats: np.sqrt(stats.masked_sumsq).max(axis=1),
            "egf_2": lambda stats: stats.sumsq.sum(axis=1),     # a built-in name: refused
            "broken": lambda stats: 1 / 0,
            "wrong_shape": lambda stats: np.ones(3),
        }
"""


def test_a_plugin_measure_is_reported_and_correlated_like_a_builtin_one(site: Path) -> None:
    install_plugin(site, "measures", MEASURES_PLUGIN)
    files = [str(FIXTURES / "runs" / name) for name in ("dense.h5", "sparse.h5", "amp.h5")]
    done = run_gfprobe(site, "report", "--format", "json", "--summary", "last", *files)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert any("'egf_2', a name already taken" in line for line in warnings)
    assert any("plugin 'measures' failed in measure 'broken': ZeroDivisionError" in line for line in warnings)
    assert any("failed in measure 'wrong_shape': ValueError: gave shape (3,)" in line for line in warnings)
    assert len(warnings) == 3, done.stderr  # once each, not once per run file
    for printed, path in zip(json.loads(done.stdout)["runs"], files, strict=True):
        run = gfapi.load(path)
        expected = np.sqrt(run.layer("masked_sumsq")).max(axis=1)[-1]
        assert printed["measures"]["widest_layer_l2"] == pytest.approx(expected, rel=1e-12)
        assert printed["measures"]["egf_2"] == pytest.approx(run.measures()["egf_2"][-1], rel=1e-12)
        assert printed["measures"]["broken"] is None and printed["measures"]["wrong_shape"] is None
    table = run_gfprobe(site, "report", *files)
    assert table.returncode == 0 and "widest_layer_l2" in table.stdout
    correlated = run_gfprobe(site, "report", "--format", "json", "--correlate", "test_acc", *files)
    assert correlated.returncode == 0, correlated.stderr
    assert "widest_layer_l2" in {row["measure"] for row in json.loads(correlated.stdout)["correlation"]}


# -- what the review of the mechanism found ---------------------------------------------------------
def test_a_look_up_that_imports_nothing_does_not_use_up_an_after_import_hook(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Libraries ask ``importlib.util.find_spec("torch")`` to see whether torch is there (as
    transformers does); the hook must still fire when the module is imported afterwards."""
    (tmp_path / "gfp_looked_up.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    after_import("gfp_looked_up", lambda module: seen.append(module.VALUE), pytest.fail)
    try:
        assert importlib.util.find_spec("gfp_looked_up") is not None
        assert seen == []
        importlib.import_module("gfp_looked_up")
        assert seen == [42]
    finally:
        sys.modules.pop("gfp_looked_up", None)
    assert not any(type(finder).__name__ == "_AfterImport" and getattr(finder, "_name", "") == "gfp_looked_up"
                   for finder in sys.meta_path)


EXITS = """
    import sys
    import gfprobe

    @gfprobe.hookimpl
    def gfprobe_record_started(recording):
        recording.after_import("torch", lambda torch: sys.exit(4))
        sys.exit(3)
"""


def test_a_plugin_that_calls_sys_exit_ends_nothing(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    plain, result = plain_and_recorded(site, out, "exits", EXITS)
    assert (result.returncode, result.stdout) == (plain.returncode, plain.stdout)
    assert "plugin 'exits' failed in gfprobe_record_started: SystemExit: 3" in result.stderr
    assert "failed on import of torch (SystemExit: 4)" in result.stderr
    assert "Traceback" not in result.stderr
    with open_run(out) as run:
        assert run.metadata["status"] == "complete"


BAD_MASK_FUNCTION = """
    import gfprobe
    from gfprobe.plugin import ModuleMask

    @gfprobe.hookimpl
    def gfprobe_module_masks(module):
        keep = getattr(module, "keep", None)
        if keep is None:
            return ["not a ModuleMask"] if hasattr(module, "out_features") else None
        return [ModuleMask("weight", module.weight, lambda: 1 / 0, "blocksparse", grad_is_masked=False)]
"""


def test_a_failing_mask_function_costs_its_parameter_only(plugins_from: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    install_plugin(plugins_from, "badmask", BAD_MASK_FUNCTION)
    train_keep_model(tmp_path / "run.h5", torch.ones(4, 6))
    with open_run(tmp_path / "run.h5") as run:
        stream = run.stream(0)
        assert run.metadata["status"] == "complete"
        assert stream.stats["has_grad"][:, 0].tolist() == [0, 0, 0]  # recorded as missing
        assert stream.stats["has_grad"][:, 1:].min() == 1  # every other parameter as usual
    failures = [r.getMessage() for r in caplog.records if "badmask" in r.getMessage()]
    assert len(failures) == 2, failures  # one line for the bad answer, one for the failing mask
    assert any("answered 'not a ModuleMask'" in line for line in failures)
    assert any("whose mask failed (ZeroDivisionError" in line for line in failures)


def test_unstorable_attributes_after_the_file_exists_cost_nothing_else(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop: dict[str, object] = {}
    loop["self"] = loop
    with gfprobe.watch(model, opt, out=tmp_path / "run.h5"):
        for step in range(4):
            opt.zero_grad()
            model(torch.randn(8, 6)).sum().backward()
            opt.step()
            if step == 1:  # the file exists by now
                gfprobe.set_attrs({"ok": 1, "nul": "a\x00b", "loop": loop, "nested": {"lr": [0.1, 0.01]}})
    with open_run(tmp_path / "run.h5") as run:
        assert run.metadata["status"] == "complete"
        assert run.stream(0).steps.tolist() == [0, 1, 2, 3]
        assert run.attrs == {"ok": 1, "nul": "a\x00b", "nested": {"lr": [0.1, 0.01]}}
    assert "run attribute 'loop' not stored: Circular reference detected" in caplog.text


LONG_SOURCE = MASKS.replace('"blocksparse"', '"a-source-name-too-long-for-its-column"')


def test_a_mask_source_too_long_for_the_file_is_refused_with_one_line(plugins_from: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    install_plugin(plugins_from, "longsource", LONG_SOURCE)
    train_keep_model(tmp_path / "run.h5", torch.ones(4, 6))
    with open_run(tmp_path / "run.h5") as run:
        assert run.params(0).mask_sources == ["none"] * 4  # cut to 16 bytes, it would be a lie
        assert run.stream(0).steps.tolist() == [0, 1, 2]
    failures = [r.getMessage() for r in caplog.records if "longsource" in r.getMessage()]
    assert len(failures) == 1 and "a source of 1 to 16 bytes" in failures[0]


def test_a_recorded_process_with_no_plugin_to_start_imports_nothing_for_plugins(site: Path, tmp_path: Path) -> None:
    """gfprobe record looks for the plugins once and tells its command's processes: where there
    is none (here: all disabled) they import neither pluggy nor importlib.metadata for them."""
    script = tmp_path / "probe_imports.py"
    script.write_text("import sys\nprint(sorted({'pluggy', 'importlib.metadata'} & set(sys.modules)))\n"
                      + THREE_STEPS)
    none = record(tmp_path / "none.h5", [sys.executable, str(script)], env=child_env())
    assert none.returncode == 0, none.stderr
    assert none.stdout.splitlines()[0] == "[]"
    install_plugin(site, "good", GOOD)
    some = record(tmp_path / "some.h5", [sys.executable, str(script)], env=plugin_env(site))
    assert some.returncode == 0, some.stderr
    assert some.stdout.splitlines()[0] == "['pluggy']"  # the plugin was loaded, without a scan
    with open_run(tmp_path / "some.h5") as run:
        assert run.attrs["plugin_saw_every"] == 1

