"""The README's GPyTorch and Pyro snippets and the GPyTorch interop docstring run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import natvi.gp.gpytorch

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(marker: str) -> str:
    """The README's fenced Python block that contains ``marker`` (exactly one)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def _docstring_example(doc: str) -> str:
    """The indented literal block after ``Example::`` in a docstring."""
    after = doc.split("Example::\n", 1)[1]
    lines = []
    for line in after.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def _run(code: str) -> dict:
    namespace: dict = {"__name__": "__snippet__"}
    exec(compile(code, "<snippet>", "exec"), namespace)
    return namespace


pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_gpytorch_snippet_runs_and_learns():
    ns = _run(_readme_block("NatviVariationalDistribution(Z.size(0)"))
    loss = float(-ns["mll"](ns["model"](ns["X"]), ns["y"]))
    assert loss < 0.6  # the Bernoulli ELBO per datum starts at ~0.69


def test_gpytorch_module_docstring_example_runs_and_learns():
    ns = _run(_docstring_example(natvi.gp.gpytorch.__doc__))
    assert float(ns["loss"]) < 1.0



def test_readme_pyro_snippet_runs_and_learns():
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ns = _run(_readme_block("NaturalSVI("))
    assert ns["svi"].num_steps == 200 and ns["loss"] < 300  # from ~900 at the initial guide
    pyro.clear_param_store()
