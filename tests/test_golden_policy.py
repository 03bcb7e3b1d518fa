"""Every comparison with a saved file goes through ``tests/golden.py`` and its stated policy.

Two rules, checked on the source of every test module: a saved file of ``tests/data/`` is named only as the
argument of ``golden.fixture``; a module that reads one compares tensors only through golden's helpers
(no ``assert_close``, ``allclose`` or ``isclose`` of its own, whose tolerance would bypass the policy).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import golden

TESTS = Path(__file__).parent
FIXTURES = {p.stem for p in golden.DATA.glob("*.pt")}
BYPASSES = {"assert_close", "allclose", "isclose"}


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _called(node: ast.Call) -> str | None:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _reads_fixture(node: ast.AST, imported: bool) -> bool:
    """A call of golden's ``fixture`` (not pytest's): ``golden.fixture(...)``, or ``fixture(...)`` imported."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "fixture" and imported) or \
        (isinstance(f, ast.Attribute) and f.attr == "fixture" and isinstance(f.value, ast.Name) and f.value.id == "golden")


def violations(source: str) -> list[str]:
    """What in ``source`` (a test module) bypasses the policy, one line each."""
    tree, found = ast.parse(source), []
    docs = _docstrings(tree)
    imported = any(isinstance(n, ast.ImportFrom) and n.module == "golden" and any(a.name == "fixture" for a in n.names)
                   for n in ast.walk(tree))
    calls = [n for n in ast.walk(tree) if _reads_fixture(n, imported)]
    allowed, reads = {id(a) for n in calls for a in n.args}, bool(calls)
    folder = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs | allowed:
            if any(f in n.value for f in FIXTURES) or "tests/data" in n.value or (n.value == "data" and id(n) in folder):
                found.append(f"line {n.lineno}: names a saved file ({n.value!r}) outside golden.fixture")
        if reads and isinstance(n, ast.Call) and _called(n) in BYPASSES:
            found.append(f"line {n.lineno}: {_called(n)} in a module that reads saved files (use golden.close)")
    return found


@pytest.mark.parametrize("path", sorted(p for p in TESTS.glob("*.py") if p.name not in ("golden.py", Path(__file__).name)),
                         ids=lambda p: p.name)
def test_saved_files_are_compared_through_the_helper(path):
    assert not violations(path.read_text()), f"{path.name}: " + "; ".join(violations(path.read_text()))


def test_the_check_sees_each_bypass():
    assert violations('G = torch.load(Path(__file__).parent / "data" / "x.pt")\n') != []
    assert violations('G = torch.load("tests/data/x.pt")\n') != []
    name = sorted(FIXTURES)[0]
    assert violations(f'G = torch.load(DIR / "{name}.pt")\n') != []
    use = "from golden import close, fixture\n"
    assert violations(f'{use}G = fixture("{name}")\ntorch.testing.assert_close(a, G["h"], atol=1e-5)\n') != []
    assert violations(f'{use}G = fixture("{name}")\nassert torch.allclose(a, b)\n') != []
    assert violations(f'import golden\nG = golden.fixture("{name}")\nassert torch.isclose(a, b).all()\n') != []
    assert violations(f'"""Made from tests/data/{name}.pt."""\n{use}G = fixture("{name}")\nclose(a, G["h"])\n') == []
    # no saved file read (pytest's fixture is not golden's): in-process comparisons are the test's own
    assert violations("@pytest.fixture\ndef m(): pass\nassert torch.allclose(a, b)\nx = res['data']\n") == []


def test_close_holds_the_policy(monkeypatch):
    import torch
    monkeypatch.delenv("NEXTSCALE_GOLDEN_LOG", raising=False)  # its failures on purpose are no margins
    ref = torch.tensor([4.0, -2.0], dtype=torch.float64)
    golden.close(ref + 3e-9, ref)                                   # 3e-9 / 4: within FLOAT64_TOL relative
    with pytest.raises(AssertionError, match="exceeds"):
        golden.close(ref + 1e-7, ref)
    with pytest.raises(AssertionError, match="compare in float64"):
        golden.close(ref.float(), ref)
    with pytest.raises(AssertionError, match="must name its float32 piece"):
        golden.close(ref, ref, 1e-5)
    with pytest.raises(TypeError, match="needs the test's tol"):
        golden.close(ref.float(), ref.float())
    golden.close(ref.float() + 1e-6, ref.float(), 1e-6)
