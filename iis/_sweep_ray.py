"""The Ray backend of :func:`iis.sweep` (``pip install "iis[ray]"``).

One extraction task per (model, layer or checkpoint, dataset) asks for the model's
``gpus``; when it has filled the shared cache, the unit's cells run as scoring tasks that
ask for ``threads`` CPUs and the memory their features need. Features travel through the
cache directory (which every node must see at the same path), never through the driver;
tasks return only the small result rows.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional

from ._sweep import _cache_path, extract_unit, run_cell

_MEMORY_SLACK = 256 << 20  # interpreter, library and solver state besides the features


def _extract_task(spec: Dict[str, Any], unit: Dict[str, Any]) -> Dict[str, Any]:
    try:
        out = extract_unit(spec, unit)
    except Exception as exc:  # reported by every cell of the unit
        return {"error": f"{type(exc).__name__}: {exc}"}
    out["bytes"] = sum(os.path.getsize(_cache_path(spec["cache"], k)) for k in unit["keys"].values())
    return out


def run_ray(spec: Dict[str, Any], units: List[Dict[str, Any]], todo: List[Dict[str, Any]],
            address: Optional[str]) -> Iterator[Dict[str, Any]]:
    """Run ``todo`` on Ray; yields each cell's result row as it finishes."""
    try:
        import ray
    except ImportError:
        raise ImportError('backend="ray" needs Ray: pip install "iis[ray]"') from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    extract = ray.remote(_extract_task)
    score = ray.remote(run_cell)
    by_unit: Dict[int, List[Dict[str, Any]]] = {}
    for c in todo:
        by_unit.setdefault(c["unit"], []).append(c)
    pending: Dict[Any, Any] = {}
    for ui in by_unit:
        gpus = units[ui]["model"]["gpus"]
        pending[extract.options(num_cpus=spec["threads"], num_gpus=gpus).remote(spec, units[ui])] = ("x", ui)
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            what, item = pending.pop(ref)
            if what == "cell":
                yield ray.get(ref)
                continue
            ext = ray.get(ref)
            mem = int(2 * ext.get("bytes", 0) + _MEMORY_SLACK)
            for i, c in enumerate(by_unit[item]):
                # the extraction's time is counted once, in the unit's first cell
                e = ext if i == 0 or ext.get("error") else dict(ext, seconds=0.0)
                opts = {"num_cpus": spec["threads"], "memory": mem}
                pending[score.options(**opts).remote(spec, c, units[item], e)] = ("cell", c)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
