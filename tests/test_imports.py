"""What the installed package imports: only declared distributions, in layers, with no cycle.

Read from the source with :mod:`ast` (nothing is imported): every ``import``
in ``services/`` and ``shared/``, at module level or inside a function, except
under ``if TYPE_CHECKING:``.

- A third-party module the code imports must come from a distribution named in
  ``[project].dependencies``: one that only arrives as someone else's
  dependency can vanish or change major version under us (httpcore, imported
  directly until issue 13, was never declared; fast-depends and pydantic-core
  are imported directly and now declared).
- ``shared/`` never imports ``services/``, and a service (``services/<name>/``)
  never imports another service: they talk through NATS (house style).
- No two modules import each other, directly or around a loop (the CLI had one,
  ``main`` and ``secrets_cmd`` through a private helper, before
  :mod:`services.cli.connection`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("services", "shared")


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: Iterable[ast.AST]) -> Iterator[tuple[str, list[str], int]]:
    """``(module, names imported from it, line)`` for every absolute import outside ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names], node.lineno
        yield from _imports(ast.iter_child_nodes(node))


def _imports_of(path: Path) -> Iterator[tuple[str, list[str], int]]:
    return _imports([ast.parse(path.read_text(encoding="utf-8"))])


def _edges() -> dict[str, dict[str, int]]:
    """For each of our modules, the modules of ours it imports and the line of the first import."""
    modules = _modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        targets: dict[str, int] = {}
        for module, names, line in _imports_of(path):
            # ``from package import submodule`` depends on the submodule; anything else on the module named.
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            for target in submodules or [module]:
                if target in modules and target != name:
                    targets.setdefault(target, line)
        edges[name] = targets
    return edges


def _owners() -> dict[str, str]:
    """Installed module (dotted) -> the normalized name of the distribution that ships it."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = _normalized(dist.metadata["Name"])
        for file in dist.files or ():
            if file.suffix in (".py", ".so", ".pyd") and ".." not in file.parts and file.parts:
                parts = list(file.with_suffix("").parts)
                parts[-1] = parts[-1].split(".")[0]  # foo.cpython-311-x86_64-linux-gnu
                if parts[-1] == "__init__":
                    parts.pop()
                if parts:
                    owners.setdefault(".".join(parts), name)
    return owners


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"pyproject.toml: unreadable requirement {requirement!r}"
        names.add(_normalized(match.group(1)))
    return names


def test_every_third_party_module_the_package_imports_comes_from_a_declared_distribution() -> None:
    owners, declared = _owners(), _declared()
    undeclared = []
    for name, path in _modules().items():
        for module, names, line in _imports_of(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES:
                continue
            owner = None
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                parts = candidate.split(".")
                owner = next(
                    (owners[".".join(parts[:k])] for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in owners),
                    None,
                )
                if owner is not None:
                    break
            assert owner is not None, f"{name}:{line} imports {module}, which no installed distribution ships"
            if owner not in declared:
                undeclared.append(f"{name}:{line} imports {module} from {owner}")
    assert not undeclared, "not in [project].dependencies:\n" + "\n".join(undeclared)


def test_shared_never_imports_a_service_and_no_service_imports_another() -> None:
    crossings = []
    for name, targets in _edges().items():
        parts = name.split(".")
        for target, line in targets.items():
            other = target.split(".")
            if parts[0] == "shared" and other[0] == "services":
                crossings.append(f"{name}:{line} imports {target}")
            if parts[0] == other[0] == "services" and len(parts) > 2 and len(other) > 1 and other[1] != parts[1]:
                crossings.append(f"{name}:{line} imports {target}")
    assert not crossings, "\n".join(crossings)


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)
