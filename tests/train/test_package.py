"""train/ reads in one direction: each module imports only modules below it in LAYERS (data
first, the commands last), never one above, and there is no import cycle. Lazy imports inside
functions count too."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "train"

LAYERS = [
    "huge_pages",  # imports nothing of train: the package imports it first
    "huge_pages_status",
    "heap",  # imports nothing of train
    "data.vocabulary",
    "data.numbers",
    "data.parallel_text",
    "data.catalog",
    "data.sources",
    "data.tokenizer_training",
    "data.batching",
    "data.token_store",
    "data.packing",
    "data.prefetch",
    "data.run_data",
    "data",
    "distributed",
    "checkpoints",
    "workdir",
    "metric_writers",
    "divergence",
    "evaluation",
    "setup",
    "loop",
    "compilation_cache",
    "inference_flags",
    "alignment_flags",
    "cli",
    "exported",
    "convert_marian",
    "evaluate",
    "translate",
    "export",
    "serve",
    "configs.default",
    "configs.multi30k",
    "configs.wmt14_base",
    "configs.wmt14_big",
    "configs",
    "__main__",
    "",
]


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _train_imports(path: pathlib.Path) -> set[str]:
    """The train modules a file imports, anywhere in it ("from train.data import batching"
    counts as train.data.batching)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            # "from train.data import batching" imports the module, not the package's names.
            names = submodules if all(_is_module(n) for n in submodules) else [node.module]
        else:
            continue
        for name in names:
            if name == "train" or name.startswith("train."):
                found.add(name.removeprefix("train").removeprefix("."))
    return found


def test_train_reads_in_one_direction() -> None:
    modules = {_module(path): _train_imports(path) for path in PACKAGE.rglob("*.py")}
    assert sorted(modules) == sorted(LAYERS), "every module has its place in LAYERS"
    for module, imported in modules.items():
        below = set(LAYERS[: LAYERS.index(module)])
        inside = {name for name in imported if name in modules}
        assert inside <= below, f"train.{module} imports {sorted(inside - below)} from above it"
        if module.startswith("data"):
            assert all(name.startswith("data") for name in inside), f"train.{module}"
    for start in modules:  # no cycles
        seen, frontier = set(), {n for n in modules[start] if n in modules}
        while frontier:
            seen |= frontier
            frontier = {n for m in frontier for n in modules[m] if n in modules} - seen
        assert start not in seen, f"train.{start} is part of an import cycle"


def test_the_layer_test_sees_lazy_imports() -> None:
    assert {"data.numbers", "data.catalog"} <= _train_imports(PACKAGE / "data" / "sources.py")
    assert "loop" in _train_imports(PACKAGE / "__main__.py")
