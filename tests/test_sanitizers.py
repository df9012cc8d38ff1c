"""The C core under AddressSanitizer + UndefinedBehaviorSanitizer, and its
allocation-failure paths.

``setup.py`` builds the sanitized extension when ``IIS_SANITIZE=1``. The module fixture
copies ``csrc/``, ``iis/`` and ``setup.py`` to a temporary folder, builds there (the
working tree's extension is untouched) and runs, in subprocesses with ``LD_PRELOAD`` of
gcc's libasan:

* the suites of ``SANITIZED`` (kernels, properties, bad input, the learned libraries, the
  sparse heads, and the fuzz corpora of the core's entry points and of the loaders), with
  ``ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1``, run to the end; the run
  must pass and print no sanitizer report, and a failure lists every failing test and report;
* LeakSanitizer made meaningful for CPython: the interpreter itself leaves thousands of
  blocks at exit, so every leak report is read and only those whose allocation stack
  passes through the extension (``csrc/`` frames, ``iis/_core``) count; none may;
* a Ctrl-C in the middle of a long ``iis.score`` (the IIS_EINTR cleanup paths), checked
  for leaks the same way;
* allocation failures: each kernel is given a problem whose scratch exceeds
  ``max_allocation_size_mb`` (with ``allocator_may_return_null=1`` the allocation returns
  NULL) and must raise ``MemoryError``, leak nothing, and leave the interpreter usable.

The same allocation-failure probes also run without the sanitizer, under an address-space
limit (``RLIMIT_AS``), so they are checked wherever the suite runs on Linux.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import iis

ROOT = Path(iis.__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")

# ----------------------------------------------------------------------------- allocation probes
PROBE = r"""
import resource, sys
import numpy as np
import iis
from iis import _core

name, mode, limit_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
small = (rng.normal(size=(40, 5)), np.arange(40) % 2, rng.normal(size=(20, 5)), np.arange(20) % 2,
         rng.normal(size=(6, 5)))
before = iis.score(*small, sparsities=(0, 0.5), n_threads=1).iis  # BLAS buffers exist from here on
if name == "path":  # W: 64 x (2**31 - 1) floats (550 GB) for a 20 x 64 input with 2 classes in use
    a = rng.standard_normal((20, 64), dtype=np.float32)
    y = (np.arange(20) % 2).astype(np.int32)
    args = (_core.path, a, y, a, y, 2**31 - 1, np.array([0.0, 0.5]), False, False, 1e-3, 1e-4, 10, 1, None)
elif name == "colstats":  # 3 x 64 x m partial sums in double (460 MB) for a 64 x m float32 input (77 MB)
    args = (_core.colstats, rng.standard_normal((64, 300_000), dtype=np.float32), 1)
elif name == "logreg_fit":  # L-BFGS state, 2 x 10 x (d + 1) K doubles (640 MB), for a 16 MB warm start
    d, K = 20000, 200
    args = (_core.logreg_fit, rng.standard_normal((4, d), dtype=np.float32), None, None, 0,
            np.arange(4, dtype=np.int32), K, 1e-3, 1e-4, 5, np.zeros((d, K), np.float32),
            np.zeros(K, np.float32), None, None, 1)
elif name == "kmeans":  # per-cluster sums, k x d doubles (32 MB), next to a 16 MB input and output
    args = (_core.kmeans, rng.standard_normal((2048, 2048), dtype=np.float32), 2048, 0, 1, 0.0, 1)
elif name == "text_fit":  # Adam state, 3 x C x d doubles (216 MB), next to a 36 MB output
    f = rng.standard_normal((3, 3000), dtype=np.float32)
    args = (_core.text_fit, f, f, f, f, 3000, None, 1, 1, 1, 1e-3, 0.9, 0.999, 1e-8, 0, 1, None)
if mode == "rlimit":  # cap the address space at what is mapped now plus limit_mb
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (limit_mb << 20), resource.RLIM_INFINITY))
try:
    args[0](*args[1:])
    outcome = "no error"
except MemoryError as exc:  # NumPy's own allocation failures are a subclass with a message
    outcome = "MemoryError" if type(exc) is MemoryError else f"{type(exc).__name__}: {exc}"
if mode == "rlimit":
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
after = iis.score(*small, sparsities=(0, 0.5), n_threads=1).iis  # still usable, same numbers
print("OUTCOME", outcome, "USABLE", before == after, flush=True)
"""

# (probe, headroom in MB under RLIMIT_AS, ASan max_allocation_size_mb): the kernel's largest
# scratch exceeds the limit, every input and output array stays below it
PROBES = [("path", 64, 4096), ("colstats", 64, 100), ("logreg_fit", 64, 100), ("kmeans", 24, 24),
          ("text_fit", 64, 50)]


def _run_probe(name, mode, limit_mb, env):
    p = subprocess.run([sys.executable, "-c", PROBE, name, mode, str(limit_mb)], capture_output=True,
                       text=True, env=env, timeout=600)
    return p


def _env(pythonpath, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + [p for p in sys.path if p])
    env.pop("LD_PRELOAD", None)
    env.update(extra)
    return env


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc are Linux")
@pytest.mark.parametrize("probe,head_mb,_", PROBES)
def test_allocation_failure_raises_memory_error(probe, head_mb, _):
    """Regular build: a kernel whose scratch does not fit under RLIMIT_AS raises MemoryError."""
    p = _run_probe(probe, "rlimit", head_mb, _env(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "OUTCOME MemoryError USABLE True" in p.stdout, p.stdout + p.stderr[-3000:]


# ----------------------------------------------------------------------------- sanitized build
def _libasan():
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None
    try:
        out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


LIBASAN = _libasan() if LINUX else None
needs_asan = pytest.mark.skipif(LIBASAN is None or not (ROOT / "csrc" / "iis.h").exists(),
                                reason="needs Linux, gcc, libasan and the C sources (an editable install)")

OUR_FRAME = re.compile(r"(^|[\s/(])csrc/|iis/_core\.cpython")


@pytest.fixture(scope="module")
def asan_tree(tmp_path_factory):
    """A copy of the package with the extension built with IIS_SANITIZE=1."""
    tree = tmp_path_factory.mktemp("asan_build")
    shutil.copytree(ROOT / "csrc", tree / "csrc")
    shutil.copytree(ROOT / "iis", tree / "iis", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tree / name)
    (tree / "tests").mkdir()
    for name in ("conftest.py",) + SANITIZED:
        shutil.copy(ROOT / "tests" / name, tree / "tests" / name)
    env = dict(os.environ, IIS_SANITIZE="1")
    env.pop("LD_PRELOAD", None)
    p = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    so = list((tree / "iis").glob("_core*.so"))
    assert so and b"__asan_init" in so[0].read_bytes(), "the extension was not built with ASan"
    return tree


# the suites run under ASan/UBSan: every C path of the kernels, the learned libraries,
# the sparse heads and the solver's progress trace, and the fuzz corpora of the core's entry points and of the loaders
SANITIZED = tuple(name for name in (
    "test_kernels.py", "test_project.py", "test_amx.py", "test_properties.py", "test_bad_input.py",
    "test_end2end.py", "test_infodisent.py", "test_sparse.py", "test_progress.py", "test_fuzz_core.py",
    "test_fuzz_loaders.py")
    if (ROOT / "tests" / name).exists())


def asan_env(tree, ubsan_halt=1, **asan):
    opts = dict(allocator_may_return_null=1, detect_leaks=1, fast_unwind_on_malloc=0, malloc_context_size=40)
    opts.update(asan)
    return _env(tree, LD_PRELOAD=LIBASAN, ASAN_OPTIONS=":".join(f"{k}={v}" for k, v in opts.items()),
                LSAN_OPTIONS="exitcode=0",  # CPython's own leaks at exit are read below, not fatal
                UBSAN_OPTIONS=f"halt_on_error={ubsan_halt}:print_stacktrace=1", PYTHONDONTWRITEBYTECODE="1",
                PYTHONFAULTHANDLER="1")


def sanitizer_reports(stderr):
    """(errors, our_leaks): ASan/UBSan error lines, and the leak reports whose allocation
    stack passes through the extension (once-per-process module set-up excluded)."""
    errors = [ln for ln in stderr.splitlines()
              if "ERROR: AddressSanitizer" in ln or "runtime error:" in ln
              or "ERROR: UndefinedBehaviorSanitizer" in ln or "AddressSanitizer:DEADLYSIGNAL" in ln]
    leaks = [b for b in re.split(r"\n\s*\n", stderr)
             if re.search(r"(Direct|Indirect) leak of", b) and OUR_FRAME.search(b) and "PyInit__core" not in b]
    return errors, leaks


def n_leak_reports(stderr):
    return len(re.findall(r"(Direct|Indirect) leak of", stderr))


@needs_asan
def test_sanitized_extension_is_the_one_imported(asan_tree):
    p = subprocess.run([sys.executable, "-c", "import iis, iis._core as c; print(c.__file__)"], cwd=asan_tree,
                       env=asan_env(asan_tree), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().startswith(str(asan_tree)), p.stdout


@needs_asan
def test_suite_under_asan_and_ubsan(asan_tree):
    """The SANITIZED suites and fuzz corpora under ASan/UBSan, run to the end: every failing test and every
    sanitizer report is listed (UBSan does not halt; an ASan error ends its process,
    and the failure message says where)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
           "-W", "ignore::DeprecationWarning", *[f"tests/{name}" for name in SANITIZED],
           # torch and matplotlib are not built with ASan (matplotlib crashes under it)
           "-k", "not torch and not result_object and not explanations_name"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=asan_tree, env=asan_env(asan_tree, ubsan_halt=0), capture_output=True,
                       text=True, timeout=1800)
    summary = [ln for ln in p.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    errors, leaks = sanitizer_reports(p.stderr)
    print(f"sanitized run: {summary[-1] if summary else '?'} in {time.perf_counter() - t0:.0f} s, "
          f"{n_leak_reports(p.stderr)} leak reports at exit (CPython's own)")
    report = ("\n".join(failed) + "\n" + "\n".join(errors) + "\n\n" + "\n\n".join(leaks[:5])
              + "\n--- stdout tail\n" + p.stdout[-3000:] + "\n--- stderr tail\n" + p.stderr[-3000:])
    assert p.returncode == 0 and not failed and not errors and not leaks, report
    assert summary and " passed" in summary[-1], report


@needs_asan
@pytest.mark.parametrize("probe,_,limit_mb", PROBES)
def test_allocation_failure_raises_memory_error_under_asan(asan_tree, probe, _, limit_mb):
    p = _run_probe(probe, "asan", 0, asan_env(asan_tree, max_allocation_size_mb=limit_mb))
    assert p.returncode == 0, p.stdout + p.stderr[-5000:]
    assert "OUTCOME MemoryError USABLE True" in p.stdout, p.stdout + p.stderr[-5000:]
    assert "failed to allocate" in p.stderr  # the sanitizer did refuse the kernel's allocation
    errors, leaks = sanitizer_reports(p.stderr)
    assert not errors and not leaks, "\n".join(errors) + "\n\n".join(leaks[:3])


@needs_asan
def test_ctrl_c_cleanup_under_asan(asan_tree):
    """SIGINT in the middle of iis.score: KeyboardInterrupt, no sanitizer report, no leak."""
    from test_interrupt import CHILD  # the workload of tests/test_interrupt.py

    p = subprocess.Popen([sys.executable, "-c", CHILD, "score"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=asan_env(asan_tree))
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(3.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-5000:]
    assert "CAUGHT" in out and "USABLE True" in out, out + err[-3000:]
    errors, leaks = sanitizer_reports(err)
    assert not errors and not leaks, "\n".join(errors) + "\n\n".join(leaks[:3])
