"""docs/architecture.md's layering rule, checked on the code: a module's top-level imports of akvq come only from
the layers its row allows (function-level imports that reach up are listed, each with its reason)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"

# layer -> the akvq modules in it (as the doc's table names them) and the layers it may import
LAYERS: dict[int, tuple[tuple[str, ...], set[int]]] = {
    0: (("errors", "paths", "native", "quant"), {0}),
    1: (("policies",), {0, 1}),
    2: (("cache",), {0, 1, 2}),
    3: (("attention",), {0, 1, 2, 3}),
    4: (("models",), {0, 4}),
    5: (("saliency", "api"), {0, 1, 2, 3, 4, 5}),
    6: (
        ("tasks", "runner", "bench", "artifacts", "integrations", "tracking", "records", "synth"),
        set(range(7)),
    ),
}
# Function-level imports that reach a higher layer, on purpose (a default that needs the layer above, at call time).
LAZY_UPWARD = {
    ("akvq.policies.base", "akvq.cache"): "Policy.new_cache: the default cache is akvq's own",
    ("akvq.policies.hf_quantized", "akvq.cache.cache"): "its cache reports memory as AKVQCache does",
    ("akvq.policies.akvq", "akvq.saliency.patterns"): "resolve(): the model's shipped TSA/PSA layer pattern",
}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "akvq" or len(parts) < 2:
        return None
    for layer, (names, _) in LAYERS.items():
        if parts[1] in names:
            return layer
    return None


def imports(path: Path) -> list[tuple[str, bool]]:
    """(akvq module imported, at top level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in ast.walk(tree) if n in tree.body}
    for stmt in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at module level count as top level
        if isinstance(stmt, ast.If | ast.Try):
            top |= {id(n) for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module] if node.module != "akvq" else [f"akvq.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        out += [(m, id(node) in top) for m in mods if m.startswith("akvq.")]
    return out


def test_every_module_has_a_layer_and_the_doc_names_it() -> None:
    doc = DOC.read_text()
    for layer, (names, _) in LAYERS.items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| {layer} "))
        for name in names:
            assert re.search(rf"`{name}(/[^`]*|\.py)?`", row), (
                f"docs/architecture.md's layer {layer} lacks `{name}`"
            )
    for path in sorted((REPO / "akvq").rglob("*.py")):
        mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if mod in ("akvq.__init__", "akvq.__main__"):
            continue
        assert layer_of(mod) is not None, f"{mod} is in no layer of docs/architecture.md"


def test_imports_follow_the_layers() -> None:
    bad = []
    for path in sorted((REPO / "akvq").rglob("*.py")):
        mod = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        me = layer_of(mod)
        if me is None:
            continue
        for target, at_top in imports(path):
            there = layer_of(target)
            if there is None or there in LAYERS[me][1]:
                continue
            if not at_top and (mod, target) in LAZY_UPWARD:
                continue
            bad.append(
                f"{mod} (layer {me}) imports {target} (layer {there}){'' if at_top else ' in a function'}"
            )
    assert not bad, "\n".join(bad)


def test_cache_may_import_policies() -> None:
    """The store reads its TensorPlan from layer 1: allowed by the table (cache may import 0-1)."""
    assert ("akvq.policies.base", True) in imports(REPO / "akvq" / "cache" / "store.py")
    assert LAYERS[2][1] >= {0, 1}
