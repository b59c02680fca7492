"""The package as installed: one import root, no import cycles, light commands that stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository's folders and the dm_tune packages they install as.
PACKAGES = {"dm_tune": ROOT / "dm_tune", "dm_tune.search_spaces": ROOT / "search_spaces",
            "dm_tune.trainables": ROOT / "trainables", "dm_tune.reports": ROOT / "reports"}
HEAVY = ("torch", "ray", "mlflow", "pandas", "optuna")


@pytest.mark.slow
def test_pip_install_adds_exactly_one_top_level_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=300)
    (dist,) = [d for d in distributions(path=[str(target)]) if d.metadata["Name"] == "dm-tune"]
    top = {Path(str(f)).parts[0] for f in dist.files if not Path(str(f)).parts[0].endswith(".dist-info")
           and Path(str(f)).parts[0] != ".." and str(f).endswith((".py", ".so", ".json", ".typed"))}
    assert top == {"dm_tune"}, top
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")} - {"bin"}
    assert installed == {"dm_tune"}, installed
    for sub in ("search_spaces", "trainables", "reports"):
        assert (target / "dm_tune" / sub / "__init__.py").is_file()
    assert (target / "dm_tune" / "reports" / "default_guidelines.json").is_file()
    assert (target / "bin" / "dm-tune").is_file()


def _module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        try:
            rel = path.relative_to(folder)
        except ValueError:
            continue
        if package == "dm_tune" and rel.parts[0] in ("search_spaces", "trainables", "reports"):
            continue
        parts = [package, *rel.with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the dm_tune modules it imports when it is imported (module level, outside
    ``if TYPE_CHECKING:``; imports inside functions run later and are not edges)."""
    files = {_module_name(p): p for folder in PACKAGES.values() for p in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ():
                if isinstance(sub, ast.Import):
                    edges.update(a.name for a in sub.names)
                elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    edges.add(sub.module)
                    edges.update(f"{sub.module}.{a.name}" for a in sub.names)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def test_no_import_cycles():
    graph = _import_graph()
    assert "dm_tune.cli" in graph and "dm_tune.reports._cli" in graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["--version"],
    ["recommend", "--num-classes", "10", "--noise-type", "symmetric", "--noise-rate", "0.3"],
    ["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--json"],
])
def test_light_commands_import_no_heavy_library(argv):
    code = ("import sys, contextlib, io\n"
            "from dm_tune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        rc = main({argv!r})\n"
            "    except SystemExit as e:\n"
            "        rc = e.code\n"
            f"print(rc, [m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split()[0] == "0" and out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    import dm_tune

    out = subprocess.run([sys.executable, "-m", "dm_tune.cli", "--version"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == f"dm-tune {version('dm-tune')}" == f"dm-tune {dm_tune.__version__}"
