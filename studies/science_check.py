"""The numbers of docs/science-check.md, from the runs of studies/mnist1d-science-check.toml.

    gfprobe scsdc run --config studies/mnist1d-science-check.toml --out gfprobe-runs/science --jobs 2
    .venv/bin/python studies/science_check.py gfprobe-runs/science/runs

Prints, as Markdown: (1) how well egf_2 and gf_2 rank sparse runs by test accuracy, over all
densities and within each; (2) how much BatchNorm raises the test accuracy of sparse and of dense
networks, per optimizer and density, with a one-sided Wilcoxon signed-rank test of "BN helps
sparse networks more" over the 12 (optimizer, density) cells; (3) the level and stability of
egf_2 with and without BatchNorm (median over runs of the 11-point summary, and of the
coefficient of variation of egf_2 over the second half of training).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from gfprobe.analysis.correlation import correlate
from gfprobe.analysis.report import RunSummary, build_report, summarise_run
from gfprobe.store.reader import open_run


def main(folder: Path) -> None:
    runs = build_report(sorted(folder.glob("*.h5")))
    print(f"{len(runs)} runs\n")
    print("| density | sparse runs | τ(gf_2, test_acc) [95% CI] | τ(egf_2, test_acc) [95% CI] |")
    print("|---|---|---|---|")
    for split, rows in ((("all",), correlate(runs, "test_acc", measures=("gf_2", "egf_2"))),
                        *(((d,), [r for r in correlate(runs, "test_acc", by=("pair_density",),
                                                       measures=("gf_2", "egf_2"))
                                  if dict(r.split)["pair_density"] == d])
                          for d in sorted({r.attrs["pair_density"] for r in runs}))):
        cells = {r.measure: r for r in rows if r.group == "sparse"}
        gf, egf = cells["gf_2"], cells["egf_2"]
        print(f"| {split[0]} | {gf.n} | {gf.coef:+.3f} [{gf.ci[0]:+.2f}, {gf.ci[1]:+.2f}] "
              f"| {egf.coef:+.3f} [{egf.ci[0]:+.2f}, {egf.ci[1]:+.2f}] |")

    acc: dict[tuple[object, ...], list[float]] = defaultdict(list)
    for run in runs:
        a = run.attrs
        acc[(a["sparse"], a["regularisation"], a["optimizer"], a["pair_density"])].append(
            run.metrics["test_acc"]["last"])
    print("\n| optimizer | density | BN gain, sparse | BN gain, dense |")
    print("|---|---|---|---|")
    gains: dict[bool, list[float]] = {True: [], False: []}
    for optimizer in sorted({k[2] for k in acc}, key=str):
        for density in sorted({k[3] for k in acc}, key=float):  # type: ignore[arg-type]
            row = []
            for sparse in (True, False):
                gain = float(np.mean(acc[(sparse, "BN", optimizer, density)])
                             - np.mean(acc[(sparse, "NR", optimizer, density)]))
                gains[sparse].append(gain)
                row.append(gain)
            print(f"| {optimizer} | {density} | {row[0]:+.3f} | {row[1]:+.3f} |")
    test = stats.wilcoxon(gains[True], gains[False], alternative="greater")
    larger = sum(s > d for s, d in zip(gains[True], gains[False], strict=True))
    print(f"\nmean BN gain: sparse {np.mean(gains[True]):+.3f}, dense {np.mean(gains[False]):+.3f}; "
          f"larger for sparse in {larger} of {len(gains[True])} cells; one-sided Wilcoxon signed-rank "
          f"p = {test.pvalue:.4f}")

    print("\n| runs | regularisation | median egf_2 | median CV of egf_2, 2nd half |")
    print("|---|---|---|---|")
    for sparse in (True, False):
        for reg in ("NR", "BN"):
            members = [r for r in runs if r.attrs["sparse"] == sparse and r.attrs["regularisation"] == reg]
            level = np.median([r.measures["egf_2"] for r in members])
            halves = [egf_2[len(egf_2) // 2:] for egf_2 in map(every_step, members)]
            cv = np.median([np.std(h) / np.mean(h) for h in halves])
            print(f"| {'sparse' if sparse else 'dense'} | {reg} | {level:.3f} | {cv:.3f} |")


def every_step(run: RunSummary) -> np.ndarray:
    """egf_2 at every recorded step (a report's summary keeps only the trend its sparkline draws)."""
    with open_run(run.path) as f:
        return summarise_run(f).series["egf_2"]


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("gfprobe-runs/science/runs"))
