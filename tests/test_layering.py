"""qlib's one-way layers, held by parsing its source with ``ast`` (nothing is imported).

Rules (the design note's "qlib: one-way layers"):

1. every module belongs to a layer, and imports point down the layers (or within one);
2. no import cycle among qlib's modules;
3. no module imports another module's ``_private`` name;
4. a package's ``__init__`` only re-exports names of its own submodules;
5. recipes are made (``Recipe(...)``) in ``qlib/recipes`` alone;
6. an import inside a function is only for an optional heavy dependency, with a reason
   in a comment on that line or the line above.

The checker is itself tested on a small fake package with one bad edge of each kind.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "qlib"

#: Layers, bottom first: a module may import from its own layer or any layer before it.
LAYERS: list[tuple[str, ...]] = [
    ("qlib", "qlib._util", "qlib._files", "qlib._table"),                   # the root and its helpers
    ("qlib.measure", "qlib.codec"),                          # measured / coded: no core
    ("qlib.corrupt", "qlib.data", "qlib.models", "qlib.train", "qlib.text", "qlib.gpt",
     "qlib.lm"),                                              # core
    ("qlib.quant", "qlib.prune", "qlib.distill", "qlib.distill_lm",
     "qlib.arch"),                                            # the techniques
    ("qlib.pipeline",),                                      # Deep Compression
    ("qlib.runtime",),                                       # ONNX / ONNX Runtime
    ("qlib.recipes",),                                       # every recipe, one list
    ("qlib.evaluate",),                                      # the measuring harness
    ("qlib.report", "qlib.plots", "qlib.deploy", "qlib.deploy_lm"),  # report, figures, benchmarks
    ("qlib.course", "qlib.__main__", "qlib.bench", "qlib.metrics"),  # CLI, course, aliases
]

#: Third-party modules that may be imported inside a function (optional or heavy).
LAZY_OK = ("matplotlib", "ipywidgets", "IPython", "onnx", "onnxruntime", "torchvision",
           "mlxtend", "sklearn", "scipy", "pydoc_data", "torchao")


@dataclass
class Edge:
    src: str
    dst: str
    names: tuple[str, ...]
    line: int
    in_function: bool
    reason: bool  # a comment on the line or the line above


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse_package(root: Path) -> tuple[dict[str, Path], list[Edge], dict[str, ast.Module]]:
    """All modules of the package at ``root`` and every import edge between them."""
    pkg = root.name
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    trees, edges = {}, []
    for name, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        trees[name] = tree
        is_pkg = path.name == "__init__.py"
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                              ast.AsyncFunctionDef))]
        inner = {id(n) for f in funcs for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join(here + ([base] if base else []))
                names = tuple(a.name for a in node.names)
                # `from . import data` imports the module qlib.data
                subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                targets = [(s, ()) for s in subs] or [(base, names)]
                if subs and len(subs) < len(names):
                    targets.append((base, tuple(n for n in names if f"{base}.{n}" not in
                                                modules)))
            else:
                continue
            ln = node.lineno
            reason = "#" in lines[ln - 1] or (ln >= 2 and lines[ln - 2].strip().startswith("#"))
            for dst, names in targets:
                edges.append(Edge(name, dst, names, ln, id(node) in inner, reason))
    _ = pkg
    return modules, edges, trees


def layer_of(name: str, layers: list[tuple[str, ...]]) -> int | None:
    best, rank = -1, None
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            # the root package's own entry matches only itself, not every module below it
            if (name == p or ("." in p and name.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    return rank


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def violations(root: Path, layers: list[tuple[str, ...]], lazy_ok=LAZY_OK,
               recipes_pkg: str = "qlib.recipes") -> list[str]:
    """Every broken rule in the package at ``root``, one line each (empty: all hold)."""
    pkg = root.name
    modules, edges, trees = parse_package(root)
    out = []
    for m in modules:
        if layer_of(m, layers) is None:
            out.append(f"{m}: in no layer (add it to LAYERS where it belongs)")
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        internal = e.dst == pkg or e.dst.startswith(pkg + ".")
        if not internal:
            if e.in_function:
                top = e.dst.split(".")[0]
                if top not in lazy_ok:
                    out.append(f"{e.src}:{e.line}: imports {e.dst} inside a function; only "
                               f"optional heavy dependencies may ({', '.join(lazy_ok)})")
                elif not e.reason:
                    out.append(f"{e.src}:{e.line}: lazy import of {e.dst} needs a one-line "
                               f"reason in a comment")
            continue
        target = e.dst
        while target not in modules and "." in target:  # `from qlib.x import name`
            target = target.rpartition(".")[0]
        if target != e.src:
            graph[e.src].add(target)
        if e.in_function and not (e.src.endswith("__main__") or target.endswith("__main__")):
            out.append(f"{e.src}:{e.line}: imports {e.dst} inside a function; qlib's own "
                       f"modules are imported at the top")
        a, b = layer_of(e.src, layers), layer_of(target, layers)
        if a is not None and b is not None and b > a:
            out.append(f"{e.src}:{e.line}: upward import of {target} (layer {b} > {a})")
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if private:
            out.append(f"{e.src}:{e.line}: imports private name(s) {private} from {e.dst}")
        if modules[e.src].name == "__init__.py" and e.src != pkg and not (
                target.startswith(e.src + ".")):
            out.append(f"{e.src}:{e.line}: a package __init__ re-exports only its own "
                       f"submodules' names, not {target}'s")
    cycle = find_cycle(graph)
    if cycle:
        out.append("import cycle: " + " -> ".join(cycle))
    for m, tree in trees.items():
        if m == recipes_pkg or m.startswith(recipes_pkg + "."):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Recipe":
                out.append(f"{m}:{node.lineno}: makes a Recipe outside {recipes_pkg}")
    return out


# ----------------------------------------------------------------------- on qlib itself
def test_qlib_keeps_its_layers() -> None:
    problems = violations(ROOT, LAYERS)
    assert not problems, "\n".join(problems)


def _python(code: str, *, timeout: float) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, once it exited 0 (else its stderr)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


TECHNIQUES = ("qlib.quant", "qlib.prune", "qlib.runtime", "qlib.measure", "qlib.codec")


def test_importing_a_technique_registers_nothing() -> None:
    """Each technique package, imported in turn into one fresh interpreter, loads neither
    the recipes nor the report; the check after each import names the one that did."""
    code = ("import importlib, sys\n"
            f"for package in {TECHNIQUES!r}:\n"
            "    importlib.import_module(package)\n"
            "    bad = [m for m in sys.modules if m.startswith('qlib.recipes')\n"
            "           or m in ('qlib.report', 'qlib.evaluate')]\n"
            "    assert not bad, (package, bad)\n")
    _python(code, timeout=120)


def test_a_notebooks_first_cell_loads_no_heavy_optional_package() -> None:
    """The checkers and the harness load without nbformat (classroom) or onnx / onnxruntime
    (the runtime recipe), and set_seed switches PyTorch's deterministic kernels without
    loading torch.compile's dynamo: each costs a second or more in every notebook kernel and
    test process. Both lazy packages still give every name they list."""
    code = ("import sys\n"
            "from qlib.course import check\n"
            "import qlib.evaluate, qlib.runtime.onnx\n"
            "qlib.set_seed(0)\n"
            "import torch\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
            "heavy = ('nbformat', 'jsonschema', 'onnx', 'onnxruntime', 'ml_dtypes', "
            "'torch._dynamo')\n"
            "loaded = [m for m in heavy if m in sys.modules]\n"
            "assert not loaded, f'loaded at start-up: {loaded}'\n"
            "import qlib.course as course, qlib.runtime as runtime\n"
            "for pkg in (course, runtime):\n"
            "    missing = [n for n in pkg.__all__ if getattr(pkg, n, None) is None]\n"
            "    assert not missing, (pkg.__name__, missing)\n"
            "assert 'nbformat' in sys.modules and 'onnx' in sys.modules\n")
    _python(code, timeout=300)


def test_registry_is_the_same_whatever_was_imported_first() -> None:
    code = ("import sys\n{pre}\nfrom qlib.recipes import load_recipes\n"
            "print(','.join(load_recipes()))")
    seen = set()
    for pre in ("", "import qlib.quant, qlib.prune", "import qlib.report",
                "import qlib.course.widgets, qlib.runtime.onnx"):
        seen.add(_python(code.format(pre=pre), timeout=120).strip())
    assert len(seen) == 1 and "ptq-w8a8" in seen.pop()


def test_python_m_qlib_list_needs_nothing_imported_first() -> None:
    from qlib.recipes import RECIPES

    res = subprocess.run([sys.executable, "-m", "qlib", "list"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    assert listed == list(RECIPES)


def test_the_public_contract_keeps_its_import_paths() -> None:
    """Every name in the design note's contract imports from its fixed path."""
    from qlib.bench import measure_latency, model_size_bytes
    from qlib.distill import distillation_loss
    from qlib.metrics import classification_report
    from qlib.prune import magnitude_mask
    from qlib.quant import choose_qparams, dequantize, fake_quantize, qrange, quantize

    import qlib.measure as m

    assert qrange(8) == (-128, 127) and qrange(8, signed=False) == (0, 255)
    assert measure_latency is m.measure_latency and model_size_bytes is m.model_size_bytes
    assert classification_report is m.classification_report
    assert all(callable(f) for f in (choose_qparams, quantize, dequantize, fake_quantize,
                                     magnitude_mask, distillation_loss))


# -------------------------------------------------- the checker on a planted bad package
def _fake_package(tmp: Path, files: dict[str, str]) -> Path:
    root = tmp / "fakepkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


FAKE_LAYERS = [("fakepkg", "fakepkg.low", "fakepkg.low2"), ("fakepkg.high", "fakepkg.recipes")]
GOOD = {"__init__.py": "", "low.py": "X = 1\n", "high.py": "from .low import X\n",
        "recipes/__init__.py": "from .cat import R\n",
        "recipes/cat.py": "def Recipe(*a):\n    return a\nR = Recipe(1)\n"}


def test_checker_passes_a_good_fake_package(tmp_path: Path) -> None:
    assert violations(_fake_package(tmp_path, GOOD), FAKE_LAYERS,
                      recipes_pkg="fakepkg.recipes") == []


@pytest.mark.parametrize("change, expected", [
    ({"low.py": "from .high import Y\nX = 1\n", "high.py": "Y = 2\n"}, "upward import"),
    ({"low.py": "from . import low2\n", "low2.py": "from . import low\n"}, "import cycle"),
    ({"high.py": "from .low import _secret\n", "low.py": "_secret = 1\n"}, "private name"),
    ({"recipes/__init__.py": "from ..low import X\n"}, "re-exports only its own"),
    ({"high.py": "def Recipe(*a):\n    return a\nR = Recipe(2)\n"}, "Recipe outside"),
    ({"high.py": "def f():\n    from .low import X\n    return X\n"}, "inside a function"),
    ({"high.py": "def f():\n    import json\n    return json\n"}, "inside a function"),
    ({"high.py": "def f():\n    import matplotlib\n    return matplotlib\n"}, "needs a one-line"),
    ({"stray.py": "X = 3\n"}, "in no layer"),
])
def test_checker_finds_each_planted_bad_edge(tmp_path: Path, change: dict, expected: str) -> None:
    root = _fake_package(tmp_path, {**GOOD, **change})
    problems = violations(root, FAKE_LAYERS, recipes_pkg="fakepkg.recipes")
    assert any(expected in p for p in problems), problems
