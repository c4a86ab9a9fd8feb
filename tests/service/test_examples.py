"""Every ``bitplan search`` example that a user reads — in the README and in ``bitplan search
--help`` — is checked with the real models: ``--check`` loads the model and validates every
option and budget against it (an infeasible budget in an example was a bug users hit first)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from service.cli import EPILOG
from tests.service.test_cli import bitplan

ROOT = Path(__file__).resolve().parents[2]


def documented_searches() -> list[str]:
    lines = [l.strip() for l in (ROOT / "README.md").read_text().splitlines()] + \
            [l.strip() for l in EPILOG.splitlines()]
    out = []
    for line in lines:
        line = line.split("  #")[0].strip()
        if re.match(r"^bitplan search --model ", line) and line not in out:
            out.append(line)
    return out


def test_the_docs_have_search_examples():
    examples = documented_searches()
    assert len(examples) >= 4
    assert any("bops=" in e for e in examples) and any("--quantizer gptq" in e for e in examples)


@pytest.mark.integration
@pytest.mark.parametrize("example", documented_searches())
def test_documented_search_example_is_valid(example, tmp_path):
    args = shlex.split(example)[1:]
    if "--out" in args:  # write where the test can, never into the repository
        args[args.index("--out") + 1] = str(tmp_path / "policy.json")
    r = bitplan(*args, "--check", timeout=600)
    assert r.returncode == 0, f"{example}\n{r.stderr[-2000:]}"
    assert r.stdout.startswith("ok: "), r.stdout


def documented_submits() -> list[str]:
    lines = [l.split("  #")[0].strip() for l in (ROOT / "README.md").read_text().splitlines()]
    return list(dict.fromkeys(l for l in lines if re.match(r"^bitplan submit --model ", l)))


@pytest.mark.parametrize("example", documented_submits())
def test_documented_submit_example_parses(example):
    """The README's ``bitplan submit`` lines use options that exist, with values that parse, and
    budget points that the remote CLI can build."""
    from service.cli import build_parser
    from service.cli_remote import _budgets
    args = build_parser().parse_args(shlex.split(example)[1:])
    points = _budgets(args)
    assert points


@pytest.mark.integration
@pytest.mark.parametrize("example", [e for e in documented_submits() if "builtin:" in e])
def test_documented_submit_example_budgets_are_feasible(example):
    """Each budget point of a README submit line on a builtin model passes the same checks a
    server makes (``bitplan search --check`` with that model and budget)."""
    from service.cli import build_parser
    from service.cli_remote import _budgets
    args = build_parser().parse_args(shlex.split(example)[1:])
    points = _budgets(args)
    for point in points if isinstance(points, list) else [points]:
        budget = [x for k, v in point.items() for x in ("--budget", f"{k}={v}")]
        r = bitplan("search", "--model", args.model, *budget, "--check", timeout=600)
        assert r.returncode == 0, f"{example} at {point}\n{r.stderr[-2000:]}"


def test_the_docs_have_submit_examples():
    assert any("--sweep" in e for e in documented_submits())
