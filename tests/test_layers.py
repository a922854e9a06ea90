"""The layering rule (docs/ARCHITECTURE.md): a module imports only its own layer and the layers below.

Every module of ckpt_sync and providers/ is read (its source, not imported), every import found —
at the top, inside a function (a lazy import), but not under ``if TYPE_CHECKING:`` — is resolved to
the module it names, and each is checked against the module's own layer. The public names that
re-export a moved module (``ckpt_sync.dcp`` and the like) and the package root are the face: they
may import anything, and importing them counts as importing what they re-export.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module's layer is the first entry its name starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "shared",
        (
            "ckpt_sync.errors",
            "ckpt_sync.units",
            "ckpt_sync.locations",
            "ckpt_sync.defaults",
            "ckpt_sync.redact",
            "ckpt_sync.logs",
            "ckpt_sync.owners",
            "ckpt_sync.buffers",
            "ckpt_sync.pipeline",
            "ckpt_sync.platform",
            "ckpt_sync.fs",
        ),
    ),
    ("providers", ("ckpt_sync.providers",)),
    ("format", ("ckpt_sync.format",)),
    ("transfer", ("ckpt_sync.transfer",)),
    ("service", ("ckpt_sync.service",)),
    ("api", ("ckpt_sync.api",)),
    ("integrations", ("ckpt_sync.integrations",)),
    ("training", ("ckpt_sync.training",)),
    ("cli", ("ckpt_sync.cli",)),
]
# The face: the package root and the documented names of moved modules (module -> what it is).
FACE = {
    "ckpt_sync.dcp": "ckpt_sync.integrations.dcp",
    "ckpt_sync.lightning": "ckpt_sync.integrations.lightning",
    "ckpt_sync.hf": "ckpt_sync.integrations.hf",
    "ckpt_sync.fsspec_fs": "ckpt_sync.integrations.fsspec_fs",
    "ckpt_sync.retention": "ckpt_sync.transfer.retention",
}


def layer_of(module: str) -> int | None:
    """The layer's index (higher is above), None for a module outside ckpt_sync or in the face."""
    module = FACE.get(module, module)
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "providers":
        parts[0:1] = ["ckpt_sync", "providers"]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (types only: never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``source`` that runs, lazy ones included."""
    tree = ast.parse(source)
    skip = _type_checking_blocks(tree)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if node.lineno in skip if hasattr(node, "lineno") else False:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import settings` names a module
                candidate = f"{target}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else target))
    return found


def _is_module(name: str) -> bool:
    rel = name.split(".")
    if rel[:2] == ["ckpt_sync", "providers"]:
        rel[0:2] = ["providers"]
    base = ROOT.joinpath(*rel)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each import of ``module`` that goes to a layer above its own, as 'line: target (layer)'."""
    own = layer_of(module)
    if own is None:
        return []
    out = []
    for line, target in imports_of(source, module, is_package):
        theirs = layer_of(target)
        if theirs is not None and theirs > own:
            out.append(f"{module}:{line} imports {target} ({LAYERS[theirs][0]} is above {LAYERS[own][0]})")
    return out


def _modules() -> list[Path]:
    return sorted([*(ROOT / "ckpt_sync").rglob("*.py"), *(ROOT / "providers").rglob("*.py")])


def test_no_module_imports_a_layer_above_its_own():
    problems = []
    for path in _modules():
        problems += upward_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    face = {"ckpt_sync", *FACE}
    unplaced = [m for m in map(module_name, _modules()) if m not in face and layer_of(m) is None]
    assert not unplaced, unplaced


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("ckpt_sync.format.manifest", "from ..transfer.push import push_path\n"),
        ("ckpt_sync.transfer.push", "def lazy():\n    from ..service import worker\n"),
        ("ckpt_sync.fs.atomic", "import ckpt_sync.format.repository\n"),
        ("ckpt_sync.service.queue", "from .. import api\n"),
        ("ckpt_sync.providers.local", "from ckpt_sync.format.locks import Lock\n"),
    ],
)
def test_the_check_catches_an_upward_import(module, source):
    """The rule would fail on an import that goes up, at the top or inside a function."""
    assert len(upward_imports(source, module)) == 1


def test_the_check_allows_imports_downward_and_for_types_only():
    source = (
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
        "from ..format.manifest import Manifest\nfrom ..errors import NotFound\n"
        "if TYPE_CHECKING:\n    from ..service.worker import SyncWorker\n"
    )
    assert upward_imports(source, "ckpt_sync.transfer.push") == []
