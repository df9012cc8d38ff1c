"""The source distribution carries every C file the build needs (pip install from an
sdist compiles csrc/ from what the tarball holds, not from the checkout), the licence
and the citation; the README's test command is the one CI runs."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_checkout = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout")


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    """Paths in the sdist, relative to its top folder."""
    tmp = tmp_path_factory.mktemp("sdist")
    # a copy without *.egg-info: setuptools would otherwise reuse a stale SOURCES.txt
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "*.egg-info", "build", "dist", ".git", ".cache", "__pycache__", "*.so", ".venv", "results"))
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp / "dist")], cwd=src,
                   check=True, capture_output=True)
    (tarball,) = (tmp / "dist").glob("*.tar.gz")
    with tarfile.open(tarball) as tf:
        return {Path(*Path(n).parts[1:]).as_posix() for n in tf.getnames() if len(Path(n).parts) > 1}


@needs_checkout
def test_sdist_holds_every_c_source_and_header(sdist_names):
    shipped = {Path(n).name for n in sdist_names if n.startswith("csrc/")}
    needed = {p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".c", ".h")}
    assert needed <= shipped, f"missing from the sdist: {sorted(needed - shipped)}"


@needs_checkout
def test_sdist_holds_license_citation_and_readme(sdist_names):
    assert {"LICENSE", "CITATION.cff", "README.md"} <= sdist_names


@pytest.mark.skipif(not (ROOT / ".ci" / "run").exists(), reason="needs the source checkout")
def test_readme_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text()
    rest = readme[readme.index("run the tests"):]
    start = rest.index("```bash\n") + len("```bash\n")
    readme_cmd = rest[start:rest.index("```", start)].strip()
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [readme_cmd]
