"""A sweep's scoring time with the dense probe shared by the libraries of a representation
(``iis.probe`` once per unit, ``iis.score(probe=...)`` per cell) and with a probe fitted in
every cell (``iis.score`` alone, as before the probe was shared).

Sweep: resnet18 (random weights, seed 0) at layer2 and layer3 on scikit-learn's 1,797 real
digits at 32 px (1,258 train, 539 eval), four libraries on the train features (Prototype
and Cluster, 20 and 50 concepts each): 2 units, 8 cells. The features are extracted once
into a shared cache first (not timed); each timed run then scores every cell from it,
alternating the two modes ``--rounds`` times. The shared mode deletes the stored probes
before each run, so that it fits them.

    python benchmarks/shared_probe.py [--threads 2] [--rounds 2]

Writes ``benchmarks/results/shared_probe.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import iis  # noqa: E402
import iis._sweep as sw  # noqa: E402


def spec(root: str, threads: int) -> dict:
    return {"out": os.path.join(root, "out"), "cache": os.path.join(root, "cache"), "threads": threads,
            "models": [{"name": "resnet18", "layers": ["layer2", "layer3"], "image_size": 32}],
            "datasets": [{"source": "digits", "size": 32}],
            "libraries": [{"kind": k, "n_concepts": m, "elements": "features"}
                          for m in (20, 50) for k in ("prototype", "cluster")]}


def run(s: dict, shared: bool) -> dict:
    shutil.rmtree(s["out"], ignore_errors=True)
    if shared:  # fit the probes again
        for d, _, files in os.walk(s["cache"]):
            for f in files:
                if f.endswith(".probe.json"):
                    os.remove(os.path.join(d, f))
    real = sw._shared_probe
    if not shared:
        sw._shared_probe = lambda *a, **k: (None, 0.0)  # iis.score fits its own probe
    try:
        load = open("/proc/loadavg").read().split()[:3]
        t0 = time.perf_counter()
        df = iis.sweep(s, progress=False)
        wall = time.perf_counter() - t0
    finally:
        sw._shared_probe = real
    assert (df["status"] == "ok").all(), df["error"].tolist()
    probes = df.groupby("layer")["time_probe"].first().sum()  # each shared probe once
    return {"mode": "shared" if shared else "per cell", "wall_s": wall, "load_before": " ".join(load),
            "scoring_s": float(probes + df["time_score"].sum()), "probe_s": float(probes),
            "score_s": float(df["time_score"].sum()), "probe_accuracy": df["probe_accuracy"].tolist(),
            "iis": df["iis"].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="iis-shared-probe-")
    try:
        s = spec(root, args.threads)
        t0 = time.perf_counter()
        iis.sweep(s, progress=False)  # extraction into the cache
        extract = time.perf_counter() - t0
        runs = [run(s, shared) for _ in range(args.rounds) for shared in (False, True)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = " ".join(open("/proc/loadavg").read().split()[:3])
    for r in runs:
        print(f"{r['mode']:>8}: sweep {r['wall_s']:.2f} s, scoring {r['scoring_s']:.2f} s "
              f"(probes {r['probe_s']:.2f} s, score calls {r['score_s']:.2f} s), load {r['load_before']}")
    out = {"threads": args.threads, "rounds": args.rounds, "first_run_with_extraction_s": extract,
           "load_after": load_after, "runs": runs}
    (HERE / "results" / "shared_probe.json").write_text(json.dumps(out, indent=1))
    rows = "\n".join(f"| {r['mode']} | {r['wall_s']:.2f} | {r['scoring_s']:.2f} | {r['probe_s']:.2f} | "
                     f"{r['score_s']:.2f} | {r['load_before']} |" for r in runs)
    diff = max(abs(a - b) for x in runs for y in runs for a, b in zip(x["probe_accuracy"], y["probe_accuracy"]))
    (HERE / "results" / "shared_probe.md").write_text(f"""# A sweep with the dense probe shared or fitted per cell

Command: `python benchmarks/shared_probe.py --threads {args.threads} --rounds {args.rounds}`

Sweep: resnet18 (random weights) at layer2 (d = 128) and layer3 (d = 256) on the 1,797
digits at 32 px (1,258 train, 539 eval, K = 10), Prototype and Cluster libraries of 20
and 50 concepts on the train features, the default grid: 2 units x 4 libraries = 8
cells, scored from cached features (the first run, with extraction, took {extract:.1f} s).
Threads {args.threads}; load average (1, 5, 15 min) before each run below, {load_after}
after the last.

| mode | sweep wall (s) | scoring (s): probes + score calls | probes (s) | score calls (s) | load before |
|---|---:|---:|---:|---:|---|
{rows}

"shared": one `iis.probe` per unit (counted once), then `iis.score(probe=...)` per cell.
"per cell": `iis.score` fits its own probe in every cell (its time is in the score calls).
Largest difference in probe accuracy between any two runs' rows: {diff:.4f}.
""")


if __name__ == "__main__":
    main()
