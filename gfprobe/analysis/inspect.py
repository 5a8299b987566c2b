"""What ``gfprobe inspect`` shows: everything a run file holds, as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gfprobe.analysis.cost import cost_json, observation_cost
from gfprobe.store.reader import open_run


def describe(path: Path) -> dict[str, Any]:
    """Metadata, attributes, each stream's parameters and steps, and each metric's count and last
    value. A rank file of a sharded run reads too: what it holds is worth seeing before a merge."""
    with open_run(path, shards_ok=True) as run:
        streams = []
        for index, optimizer in enumerate(run.stream_names()):
            data = run.stream(index, fields=("has_grad",))
            params = data.params
            streams.append({
                "index": index, "optimizer": optimizer, "protocol": data.protocol, "attrs": data.attrs,
                "records": int(data.steps.size),
                "skipped": int(data.skipped.sum()),
                "cost": cost_json(observation_cost(data)),
                "params": [{"name": n, "shape": list(s), "numel": int(k), "kind": kind, "module_type": mt,
                            "mask_source": ms}
                           for n, s, k, kind, mt, ms in zip(params.names, params.shapes, params.numel,
                                                             params.kinds, params.module_types,
                                                             params.mask_sources, strict=True)],
            })
        metrics = {name: {"count": int(m.values.size), "last": float(m.values[-1]) if m.values.size else None}
                   for name, m in run.metrics().items()}
        return {"path": str(path), "metadata": run.metadata, "attrs": run.attrs,
                "streams": streams, "metrics": metrics}
