"""examples/learned_libraries.py, run as a user would (reduced sizes), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # noqa: F401  # CI installs the torch extra: this test must run
else:  # pragma: no cover
    pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def test_learned_libraries_example(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    env["MPLBACKEND"] = "Agg"
    cmd = [sys.executable, str(ROOT / "examples" / "learned_libraries.py"), "--per-class", "6", "--size", "64",
           "--element-images", "2", "--n-concepts", "12", "--infodisent-steps", "5", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["iis"]) == {"Prototype", "Cluster", "End2End", "InfoDisent basis"}
    assert summary["n_concepts"]["InfoDisent basis"] == 12 and summary["n_concepts"]["Prototype"] == 12
    assert summary["data"]["map_shape"] == [4, 1280]  # 64 px -> a 2 x 2 map of 1280 channels
    assert 0.0 <= summary["infodisent_accuracy"] <= 1.0
    for line in ("| End2End | ", "| InfoDisent basis | 12 |", "linear probe on the pooled features"):
        assert line in proc.stdout
    assert (out / "explanations.png").stat().st_size > 10000
