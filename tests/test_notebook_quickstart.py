"""notebooks/quickstart.ipynb executes end to end (nbclient) on reduced sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # noqa: F401  # CI installs the torch extra: this test must run
else:  # pragma: no cover
    pytest.importorskip("torch")

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
REDUCED = """SIZE = 48
PER_CLASS = 12
ELEMENT_IMAGES = 2
N_CONCEPTS = 30
SEED = 0"""


def test_quickstart_executes(monkeypatch, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source = REDUCED
    # The kernel imports the package from this checkout even when it is not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel shows figures inline
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "chelsea.png -> " in text and "cat" in text.split("chelsea.png -> ")[1].splitlines()[0]
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["n_train"] + summary["n_eval"] == 120 and summary["n_concepts"] == 30
    assert 0.0 < summary["iis"] <= 1.2 and 0.5 < summary["probe_accuracy"] <= 1.0
    assert len(summary["arr"]) == 8
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3, "digits, elements montage and the ARR plot"
