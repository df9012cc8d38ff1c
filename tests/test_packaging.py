"""The source distribution carries every C file the build needs (pip install from an
sdist compiles csrc/ from what the tarball holds, not from the checkout)."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout")
def test_sdist_holds_every_c_source_and_header(tmp_path):
    # a copy without *.egg-info: setuptools would otherwise reuse a stale SOURCES.txt
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "*.egg-info", "build", "dist", ".git", ".cache", "__pycache__", "*.so", ".venv", "results"))
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                   check=True, capture_output=True)
    (tarball,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(tarball) as tf:
        shipped = {Path(n).name for n in tf.getnames() if "/csrc/" in n}
    needed = {p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".c", ".h")}
    assert needed <= shipped, f"missing from the sdist: {sorted(needed - shipped)}"
