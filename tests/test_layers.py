"""The layering docs/contracts.md promises, read from the source (every import, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Modules ``path`` imports (``from a.b import c`` → ``a.b``); ``runtime_only`` skips ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_evaluate_and_train_never_import_generate() -> None:
    offenders = {str(p.relative_to(REPO)): m for p in modules("synthgen/evaluate") + modules("synthgen/train")
                 for m in imports(p) if m == "synthgen.generate" or m.startswith("synthgen.generate.")}
    assert not offenders, offenders


def test_io_stands_below_everything_else() -> None:
    allowed = ("synthgen.io", "synthgen.ecg", "synthgen.errors")
    offenders = {str(p.relative_to(REPO)): m for p in modules("synthgen/io")
                 for m in imports(p, runtime_only=True)
                 if (m == "synthgen" or m.startswith("synthgen.")) and not m.startswith(allowed)
                 and m != "synthgen"}  # `from synthgen import __version__`
    assert not offenders, offenders


def test_classifiers_import_generate_only_to_run_a_generation() -> None:
    """Reading a generate output goes through synthgen.io.generated; synthgen.generate is only for making one
    (its manifests, its config and its run), from the experiment."""
    uses = {(p.name, m) for p in modules("classifiers") for m in imports(p) if m.startswith("synthgen.generate")}
    assert uses <= {("experiment.py", "synthgen.generate.manifest"), ("experiment.py", "synthgen.generate.config"),
                    ("experiment.py", "synthgen.generate.run")}, uses
    assert "synthgen.io.generated" in imports(REPO / "classifiers" / "data.py")
