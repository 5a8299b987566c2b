"""The SC-SDC study engine (SCIENCE.md §4–6): capacity-matched sparse and dense networks, the
experiment grid, and the runner that trains every run under gfprobe.

``names`` and ``capacity`` and ``config`` import no torch: planning and validating a study works
where only the analysis side is installed.
"""
