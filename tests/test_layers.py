"""The layering of ARCHITECTURE.md: each module imports only from its own layer and those above,
the front doors (`cli/`, `serving/`) included: no library module imports a front door, and the
server does not import the command line."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package's folder and the name it is installed under (setup.cfg's package_dir).
PACKAGES = {"tfmeta": ROOT / "tfmeta", "tfmeta_serving": ROOT / "serving",
            "tfmeta_cli": ROOT / "cli"}
# ARCHITECTURE.md's table, top to bottom; a package's modules share its layer unless named.
LAYERS = [
    ["config", "errors", "faults", "files", "rundir", "stats", "ports", "record_keys"],
    ["tree", "batch_norm", "custom", "backbones", "models", "losses", "adaptation", "hessian",
     "meta_batch", "distribute", "refusals", "adapted_task", "tasks.episode"],
    ["tasks"],
    ["algorithms"],
    ["evaluation", "landscape", "verdicts", "power", "report"],
    ["run", "training", "records", "summaries", "analysis", "export", "quiet", "workers", "keras"],
    ["experiments"],
    ["tfmeta_serving"],
    ["tfmeta_cli"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> int:
    """The layer of "tfmeta.a.b": of "a.b" when the table names it, else of "a"; a front
    door's module has its package's layer."""
    package, *parts = module.split(".")
    if package != "tfmeta":
        return LAYER.get(package)
    return LAYER.get(".".join(parts[:2]), LAYER.get(parts[0]))


def imports(path: Path) -> list:
    names, ours = [], tuple(PACKAGES)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(ours):
            names += ([node.module] if node.module not in ours
                      else [f"{node.module}.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith(ours)]
    return names


def test_modules_import_only_from_their_layer_and_those_above():
    upward, seen = [], set()
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            module = ".".join((package,) + path.relative_to(folder).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            if module == "tfmeta":
                continue
            own = layer_of(module)
            assert own is not None, f"{module} is in no layer of ARCHITECTURE.md"
            seen.add(package)
            upward += [f"{module} imports {name}" for name in imports(path)
                       if layer_of(name) is not None and layer_of(name) > own]
    assert seen == set(PACKAGES)
    assert not upward
