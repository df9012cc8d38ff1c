"""The ``iis`` command's flags (issue 17): every flag has help text, ``iis score`` takes
the solver's ``--tol`` and ``--max-iter`` and the thread count is ``--n-threads``, the
name of the Python argument."""
import argparse
import json
import warnings

import numpy as np
import pytest

import iis
from iis.cli import build_parser, main


def _parsers(parser, prog="iis"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_flag_has_help():
    missing = []
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{prog} {a.dest}" for a in action._choices_actions if not a.help]
    assert not missing, f"flags without help: {missing}"
    assert {"iis score", "iis demo", "iis explain", "iis config"} <= {p for p, _ in _parsers(build_parser())}


def test_score_passes_tol_max_iter_and_n_threads(tmp_path):
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, 8)) * 2
    ytr, yev = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    xtr, xev = means[ytr] + rng.normal(size=(150, 8)), means[yev] + rng.normal(size=(60, 8))
    lib = iis.ConceptLibrary(rng.normal(size=(6, 8)))
    np.savez(tmp_path / "tr.npz", features=xtr, labels=ytr)
    np.savez(tmp_path / "ev.npz", features=xev, labels=yev)
    lib.save(tmp_path / "lib.npz")
    kw = dict(sparsities=(0.0, 0.5), tol=1e-3, max_iter=4, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", iis.ConvergenceWarning)
        ref = iis.score(xtr, ytr, xev, yev, lib, **kw)
        assert main(["score", "--train", str(tmp_path / "tr.npz"), "--eval", str(tmp_path / "ev.npz"),
                     "--library", str(tmp_path / "lib.npz"), "--sparsities", "0,0.5", "--tol", "1e-3",
                     "--max-iter", "4", "--n-threads", "1", "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert max(got["n_iter"] + [got["probe_n_iter"]]) <= 4
    for key in ("iis", "arr", "probe_accuracy", "n_iter", "probe_n_iter", "converged"):
        assert got[key] == ref.to_dict()[key], key
    default = build_parser().parse_args(["score", "--train", "a", "--eval", "b"])
    assert (default.tol, default.max_iter, default.n_threads) == (1e-5, 1000, None)  # iis.score's defaults


@pytest.mark.parametrize("command", [["score", "--train", "a", "--eval", "b"], ["demo"]])
def test_threads_flag_is_n_threads(command):
    parser = build_parser()
    assert parser.parse_args(command + ["--n-threads", "-2"]).n_threads == -2
    with pytest.raises(SystemExit):
        parser.parse_args(command + ["--threads", "2"])


def test_score_shows_the_chance_mark(tmp_path, capsys):
    """Random labels: iis score prints the WARNING line of the result and writes the mark."""
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "tr.npz", features=rng.normal(size=(150, 8)), labels=rng.integers(0, 3, 150))
    np.savez(tmp_path / "ev.npz", features=rng.normal(size=(90, 8)), labels=rng.integers(0, 3, 90))
    with pytest.warns(UserWarning, match="not clearly above chance"):
        assert main(["score", "--train", str(tmp_path / "tr.npz"), "--eval", str(tmp_path / "ev.npz"),
                     "--library", "prototype:6", "--sparsities", "0,0.5", "--n-threads", "1", "--quiet",
                     "--out", str(tmp_path / "r.json")]) == 0
    assert "WARNING: the probe is not clearly above chance" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["probe_above_chance"] is False
