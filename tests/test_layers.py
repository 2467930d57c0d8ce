"""colm_core reads from the bottom up: a module imports only from layers below its own, imports inside
functions included, so no import cycle can form. docs/architecture.md explains the layers."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom first. A module may import the modules of lower layers only (never its own layer's).
LAYERS = (
    ("errors", "cache", "strict_json", "optimizer_state"),
    ("config", "references"),
    ("tokenizer", "options"),
    ("model", "losses"),
    ("evaluate", "generation", "parallel"),
    ("card", "data", "init", "serving"),
    ("checkpoint",),
    ("verify", "run_directory"),
    ("surgery", "llama", "train"),
    ("export", "gguf"),
    ("hub",),
    ("resolve",),
    ("inspect", "api"),
    ("lm_eval_adapter",),
)
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_names(package: str) -> list[str]:
    root = REPO / package
    return sorted(
        ".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py") if p.name != "__init__.py"
    )


def imported_modules(path: Path) -> set[str]:
    """Every first-party module `path` imports, at top level or inside a function (absolute imports only)."""
    first_party = {"colm_core", "colm_cli", "colm_kernels"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports, which this check reads"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from colm_core import hub`
    return {m for m in found if m.split(".")[0] in first_party}


def core_module(name: str) -> str | None:
    """colm_core.checkpoint -> checkpoint; submodules of a submodule count as the submodule."""
    parts = name.split(".")
    return parts[1] if parts[0] == "colm_core" and len(parts) > 1 else None


def test_every_core_module_has_a_layer():
    modules = {name.split(".")[0] for name in module_names("colm_core")} - {"hf_modeling"}
    assert modules == set(LAYER), "place a new module in LAYERS (and in docs/architecture.md)"


def test_core_imports_only_downward():
    upward = set()
    for name in module_names("colm_core"):
        if name.startswith("hf_modeling"):
            continue
        for imported in imported_modules(REPO / "colm_core" / f"{name.replace('.', '/')}.py"):
            assert not imported.startswith("colm_cli"), f"colm_core.{name} imports the CLI ({imported})"
            target = core_module(imported)
            if target is None or target not in LAYER:  # kernels, the package itself (__version__), attributes
                continue
            if LAYER[target] >= LAYER[name]:
                upward.add(f"colm_core.{name} (layer {LAYER[name]}) imports colm_core.{target} (layer {LAYER[target]})")
    assert not upward, "\n".join(sorted(upward))


def test_package_root_kernels_and_modeling_file_import_nothing_above():
    assert imported_modules(REPO / "colm_core" / "__init__.py") == set()  # exports are lazy
    modeling = REPO / "colm_core" / "hf_modeling" / "modeling_colm.py"
    assert imported_modules(modeling) == set()  # transformers loads it alone
    for name in module_names("colm_kernels"):
        imports = imported_modules(REPO / "colm_kernels" / f"{name.replace('.', '/')}.py")
        assert not {m for m in imports if not m.startswith("colm_kernels")}, f"colm_kernels.{name} imports {imports}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import os\n\ndef f():\n    from colm_core.resolve import resolve_checkpoint\n")
    assert imported_modules(source) == {"colm_core.resolve", "colm_core.resolve.resolve_checkpoint"}
