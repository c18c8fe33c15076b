"""The package's layers, read from its own files with ``ast``: no import cycles, no upward imports, frameworks
only where their layer allows them, and no function-local imports of ddpm_lab modules (the usual way to hide a
cycle). ``problems(root)`` is the checker; the last tests feed it deliberately broken copies to prove it bites."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, cli_env

PACKAGE = REPO_ROOT / "ddpm_lab"

# Lowest first. A module may import from its own layer and the layers below, never from a layer above.
LAYERS: list[set[str]] = [
    {"ddpm_lab.errors"},  # what a user can get wrong; no dependencies
    {"ddpm_lab.ranks"},  # which images each process draws, gathered back in order: plain PyTorch
    {"ddpm_lab.diffusion", "ddpm_lab.models"},  # the math and the networks: plain PyTorch
    {"ddpm_lab.artifacts", "ddpm_lab.metrics"},  # files we write and read back, scores: plain PyTorch
    {"ddpm_lab"},  # the public API (ddpm_lab/__init__.py): plain PyTorch
    {"ddpm_lab.data"},  # LightningDataModules
    {"ddpm_lab.training"},  # the LightningModule and callbacks
    {"ddpm_lab.config"},  # Hydra: compose, check, build, run folders
    {
        "ddpm_lab.train",
        "ddpm_lab.sample",
        "ddpm_lab.evaluate",
        "ddpm_lab.visualize",
        "ddpm_lab.convert",
        "ddpm_lab.ema",
        "ddpm_lab.shards",
    },  # entry points
]
# Third-party frameworks and the lowest layer allowed to import them.
FRAMEWORKS = {
    "pytorch_lightning": "ddpm_lab.data",
    "lightning": "ddpm_lab.data",
    "lightning_fabric": "ddpm_lab.data",
    "hydra": "ddpm_lab.config",
    "omegaconf": "ddpm_lab.config",
    "diffusers": "ddpm_lab.artifacts",  # optional (ddpm_lab[diffusers]): only artifacts.diffusers_io imports it
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest unit name it starts with."""
    best, level = -1, -1
    for i, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and len(unit) > best:
                best, level = len(unit), i
    if level < 0:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_architecture.py")
    return level


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports included)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported module, line, inside a function)] for every module of the package at ``root``."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    found: dict[str, list[tuple[str, int, bool]]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        local = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                # ``from pkg import sub`` imports the submodule when there is one, else a name of pkg.
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges += [(name, node.lineno, id(node) in local) for name in dict.fromkeys(names)]
        found[module] = edges
    return found


def _own(name: str, modules: set[str]) -> str | None:
    """The package module ``name`` refers to (the longest existing prefix), or None for third-party names."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def problems(root: Path) -> list[str]:
    """Every breach of the layering rules in the package at ``root``, as readable lines."""
    graph = imports(root)
    modules = set(graph)
    found: list[str] = []
    own_edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, edges in graph.items():
        for name, line, in_function in edges:
            target = _own(name, modules) if name.split(".")[0] == "ddpm_lab" else None
            if target is not None:
                if in_function:
                    found.append(f"{module}:{line} imports {target} inside a function (import it at the top)")
                if layer_of(target) > layer_of(module):
                    found.append(f"{module}:{line} imports {target} from a higher layer")
                if target != module:
                    own_edges[module].add(target)
                continue
            top = name.split(".")[0]
            if top in FRAMEWORKS and layer_of(module) < layer_of(FRAMEWORKS[top]):
                found.append(f"{module}:{line} imports {name}, which only {FRAMEWORKS[top]} and above may use")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(own_edges)]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_keeps_its_layers():
    assert problems(PACKAGE) == []


def test_every_module_has_a_layer():
    for module in imports(PACKAGE):
        layer_of(module)


def test_importing_ddpm_lab_loads_neither_lightning_nor_hydra(tmp_path: Path):
    """A notebook can import ddpm_lab, load a checkpoint and sample without the training stack (or diffusers)."""
    ckpt = REPO_ROOT / "tests" / "fixtures" / "legacy_run" / "checkpoints" / "last.ckpt"
    code = (
        "import sys, ddpm_lab\n"
        f"net, diffusion, sampler = ddpm_lab.load_model({str(ckpt)!r})\n"
        "x = ddpm_lab.generate(net, diffusion, 2, sampler=sampler, seed=0)\n"
        "assert x.shape == (2, 1, 8, 8), x.shape\n"
        "stack = ('pytorch_lightning', 'lightning', 'lightning_fabric', 'hydra', 'omegaconf', 'diffusers')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in stack)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout, proc.stdout


# ------------------------------------------------------------------- the checker finds what it should
BREAKS = {
    "cycle": ("ddpm_lab/diffusion/core.py", "from ddpm_lab.diffusion.generate import generate\n", "import cycle: "),
    "upward import": (
        "ddpm_lab/models/unet.py",
        "from ddpm_lab.training.module import DiffusionModule\n",
        "ddpm_lab.models.unet:1 imports ddpm_lab.training.module from a higher layer",
    ),
    "lightning in the math": (
        "ddpm_lab/diffusion/samplers.py",
        "import pytorch_lightning\n",
        "ddpm_lab.diffusion.samplers:1 imports pytorch_lightning",
    ),
    "hydra in training": (
        "ddpm_lab/training/ema.py",
        "from omegaconf import OmegaConf\n",
        "ddpm_lab.training.ema:1 imports omegaconf",
    ),
    "import inside a function": (
        "ddpm_lab/artifacts/images.py",
        "def _late():\n    from ddpm_lab.artifacts.checkpoint import read_checkpoint\n",
        "ddpm_lab.artifacts.images:2 imports ddpm_lab.artifacts.checkpoint inside a function",
    ),
}


@pytest.mark.parametrize("kind", list(BREAKS))
def test_the_checker_finds_a_deliberate_break(kind: str, tmp_path: Path):
    copy = tmp_path / "ddpm_lab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rel, line, expected = BREAKS[kind]
    target = tmp_path / rel
    target.write_text(line + target.read_text())
    found = problems(copy)
    assert any(expected in p for p in found), found
