"""The package: its public names, the deprecated old ones, the modules as a stack (read from
their imports), and the README example and CI commands."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import subprocess
import warnings

import pytest

import flax_transformer as ft

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "flax_transformer"

PUBLIC = {
    "DataParallel",
    "TrainState",
    "Transformer",
    "TransformerConfig",
    "attention_weights",
    "beam_search",
    "count_params",
    "create_train_state",
    "decoder_logits",
    "encode",
    "eval_step",
    "forward",
    "greedy_decode",
    "init_params",
    "make_optimizer",
    "sample_decode",
    "summarize_metrics",
    "train_step",
    "transformer_schedule",
}

# The top-level names of the release before the restructuring, written out: each must still
# resolve, either as a public name or as a deprecated alias of its new home.
OLD_TOP_LEVEL = [
    "BeamState",
    "DataParallel",
    "DecodingCache",
    "KeyValue",
    "TrainState",
    "beam_search",
    "create_train_state",
    "decode_step",
    "decoder_step_mask",
    "eval_step",
    "greedy_decode",
    "greedy_decode_uncached",
    "init_cache",
    "sample_decode",
    "strip_after_eos",
    "top_k_filter",
    "top_p_filter",
    "make_optimizer",
    "summarize_metrics",
    "train_step",
    "transformer_schedule",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "PositionEmbedding",
    "TokenEmbedding",
    "Transformer",
    "TransformerConfig",
    "attention_weights",
    "causal_mask",
    "check_tokens",
    "combine_masks",
    "count_params",
    "cross_attention_mask",
    "decode",
    "decoder_self_attention_mask",
    "encode",
    "encoder_self_attention_mask",
    "forward",
    "fused_dot_product_attention",
    "init_params",
    "padding_mask",
    "scaled_dot_product_attention",
    "segment_mask",
    "sinusoidal_encoding_at",
    "sinusoidal_position_encoding",
    "stack_layer_params",
    "unstack_layer_params",
    "with_cooldown",
]

# The library's modules from the bottom of the stack up: each may import only modules before it.
STACK = [
    "positional",
    "config",
    "masks",
    "dropout",
    "attention",
    "layers",
    "search",
    "checks",
    "model",
    "decoding",
    "alignment",
    "training",
    "parallel",
    "interop.marian",
    "interop",
    "apply",
    "",  # the package itself: flax_transformer/__init__.py
    "demo",
]


def test_public_names_resolve_without_warnings():
    assert set(ft.__all__) == PUBLIC and len(OLD_TOP_LEVEL) == 52
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in PUBLIC:
            assert getattr(ft, name) is not None
        assert ft.masks.causal_mask and ft.search.beam_search and ft.layers.MultiHeadAttention
        assert ft.interop.marian.load_marian and ft.parallel.MODES == ("single", "pmap", "mesh")
        assert ft.decoding.greedy_decode_uncached and ft.training.with_cooldown


@pytest.mark.parametrize("old", sorted(set(OLD_TOP_LEVEL) - PUBLIC) + ["marian"])
def test_old_names_warn_and_return_the_same_object(old):
    new = ft.DEPRECATED_NAMES[old]
    module, _, name = new.rpartition(".")
    expected = (
        getattr(importlib.import_module(f"flax_transformer.{module}"), name) if module else None
    )
    if old == "decode":
        assert new == "decoder_logits"
        expected = ft.apply.decoder_logits
    elif old == "marian":
        assert new == "interop.marian"
        expected = importlib.import_module("flax_transformer.interop.marian")
    else:
        assert name == old  # moved, not renamed
    with pytest.warns(
        DeprecationWarning,
        match=rf"flax_transformer\.{old} is deprecated: use "
        rf"flax_transformer\.{re.escape(new)}",
    ):
        assert getattr(ft, old) is expected


def test_old_names_are_all_kept_and_unknown_names_fail():
    # Every old name is public or deprecated (the module `marian` is deprecated too).
    assert set(OLD_TOP_LEVEL) - PUBLIC == set(ft.DEPRECATED_NAMES) - {"marian"}
    assert not set(ft.DEPRECATED_NAMES) & PUBLIC
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ft.no_such_name  # noqa: B018
    with pytest.warns(DeprecationWarning):
        from flax_transformer import causal_mask
    assert causal_mask is ft.masks.causal_mask


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    """`flax_transformer.x.y` names a module (or package) of the library."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def library_imports(path: pathlib.Path) -> set[str]:
    """The modules a file imports (inside functions too): library modules by their name in
    STACK ("" for the package's own names, `import flax_transformer`), others by their top-level
    name. `from flax_transformer import masks` imports the module masks."""
    found = set()

    def add(dotted: str) -> None:
        top, _, rest = dotted.partition(".")
        found.add(rest if top == "flax_transformer" else top)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path.name}: a relative import"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                add(submodule if _is_module(submodule) else node.module)
    return found


def test_the_library_is_a_stack():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path): library_imports(path) for path in files}
    assert sorted(modules) == sorted(STACK), "every module has its place in STACK"
    for module, imported in modules.items():
        below = set(STACK[: STACK.index(module)])
        library = {name for name in imported if name in modules}
        assert library <= below, f"{module or '__init__'} imports {sorted(library - below)}"
        assert "train" not in imported, f"{module} imports train"
        if module not in ("", "demo"):
            assert not {"apply", "decoding"} & library, f"{module} imports a top module"
    # No cycles: walking the import graph from every module never comes back to it.
    for start in modules:
        seen, frontier = set(), {name for name in modules[start] if name in modules}
        while frontier:
            seen |= frontier
            frontier = {n for m in frontier for n in modules[m] if n in modules} - seen
        assert start not in seen, f"{start} is part of an import cycle"


def test_the_stack_test_sees_imports():
    """The premise of the stack test: it reads every form of import these files use."""
    assert library_imports(PACKAGE / "model.py") >= {"checks", "masks", "config", "layers"}
    assert "" not in library_imports(PACKAGE / "model.py")
    assert library_imports(PACKAGE / "demo.py") >= {""}
    assert {"interop.marian", "safetensors"} <= library_imports(
        PACKAGE / "interop" / "__init__.py"
    ) | library_imports(PACKAGE / "interop" / "marian.py")


def test_readme_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["logits"].shape[-1] == namespace["config"].vocab_size


def test_ci_runs_exactly_the_readme_test_commands():
    """.ci/run reads the README's test command and reference-test command and runs both."""
    ci = (ROOT / ".ci" / "run").read_text()
    (function,) = re.findall(r"^readme_block\(\) \{.*?^\}$", ci, re.M | re.S)
    readme = (ROOT / "README.md").read_text()
    for marker in ("test-command", "reference-test-command"):
        extracted = subprocess.run(
            ["bash", "-c", f"{function}\nreadme_block {marker}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        block = readme.split(f"<!-- {marker} -->\n", 1)[1].split("```bash\n", 1)[1]
        assert extracted == block.split("\n", 1)[0].strip() and "pytest" in extracted
    assert 'bash -c "$test_command"' in ci and 'bash -c "$reference_command"' in ci
