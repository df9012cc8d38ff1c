"""examples/pretrained_efficientnet.py, run as a user would (reduced sizes), offline."""

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
SCRIPT = ROOT / "examples" / "pretrained_efficientnet.py"


def test_pretrained_example_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"  # proves that nothing is downloaded
    env["MPLBACKEND"] = "Agg"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--per-class", "12", "--size", "48",
           "--element-images", "2", "--n-concepts", "30", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Egyptian cat" in proc.stdout or "tabby" in proc.stdout or "tiger cat" in proc.stdout
    assert "[IIS] prototype library (M=30)" in proc.stdout and "[IIS] cluster library (M=30)" in proc.stdout

    summary = json.loads((out / "results.json").read_text())
    cat, coffee = summary["sanity"]
    assert 281 <= cat["class_index"] <= 285 and cat["probability"] > 0.5  # a cat, confidently
    assert coffee["class_index"] == 967  # espresso
    assert summary["feature_dim"] == 1280
    assert summary["data"]["n_train"] + summary["data"]["n_eval"] == 120
    assert summary["data"]["n_elements"] > 20
    for kind in ("prototype", "cluster"):
        res = summary["results"][kind]
        assert res["library_kind"] == kind and res["n_concepts"] == 30
        assert 0.0 < res["iis"] <= 1.2
        assert 0.5 < res["probe_accuracy"] <= 1.0  # ten classes: chance is 0.1
        assert len(res["arr"]) == 8 and res["kept"][0] == 30
    png = (out / "arr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
