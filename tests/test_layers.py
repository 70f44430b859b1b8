"""The layering of ARCHITECTURE.md: each module imports only from its own layer and those above."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfmeta"
# ARCHITECTURE.md's table, top to bottom; a package's modules share its layer unless named.
LAYERS = [
    ["config", "errors", "faults", "files", "rundir", "stats", "ports"],
    ["tree", "batch_norm", "custom", "backbones", "models", "losses", "adaptation", "hessian",
     "meta_batch", "distribute", "tasks.episode"],
    ["tasks"],
    ["algorithms"],
    ["evaluation", "landscape", "verdicts", "power", "report"],
    ["run", "training", "records", "summaries", "analysis", "export", "quiet", "workers", "keras"],
    ["experiments"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> int:
    """The layer of "tfmeta.a.b": of "a.b" when the table names it, else of "a"."""
    parts = module.split(".")[1:]
    return LAYER.get(".".join(parts[:2]), LAYER.get(parts[0]))


def imports(path: Path) -> list:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfmeta"):
            names += ([node.module] if node.module != "tfmeta"
                      else [f"tfmeta.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("tfmeta.")]
    return names


def test_modules_import_only_from_their_layer_and_those_above():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("tfmeta",) + path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if module == "tfmeta":
            continue
        own = layer_of(module)
        assert own is not None, f"{module} is in no layer of ARCHITECTURE.md"
        upward += [f"{module} imports {name}" for name in imports(path)
                   if layer_of(name) is not None and layer_of(name) > own]
    assert not upward
