"""The schema checker's pieces: one-line messages, model shapes read without weights, the records path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from akvq.errors import ConfigError
from akvq.runner import validate as v


def test_checks_say_key_value_and_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"^quant.bits=true: must be one of \[1, 2, 3, 4, 8\]$"):
        v.quant_ranges()["bits"]("quant.bits", True)
    with pytest.raises(ConfigError, match=r"^x=0: must be a number > 0 and <= 1 or null$"):
        v.Float(0, 1, lo_open=True, nullable=True)("x", 0)
    with pytest.raises(ConfigError, match=r'^t.lengths\[1\]="a": must be an integer >= 64'):
        v.TASK_SCHEMAS["passkey"]["lengths"]("t.lengths", [64, "a"])
    v.Float(0, 1)("x", 1)  # ints are numbers; bools are not
    with pytest.raises(ConfigError):
        v.Float(0, 1)("x", True)
    assert "\n" not in str(v.fail("k", "a\nb", "line one\nline two"))


def test_every_policy_field_and_model_key_has_a_schema() -> None:
    from akvq.models import ModelSpec
    from akvq.policies import POLICIES

    for name, cls in POLICIES.items():
        schema = v.quant_schema(name)
        assert set(schema) == {"policy", *(f.name for f in dataclasses.fields(cls))}
        assert all(not (isinstance(c, v.Check) and c.kind == "any") for c in schema.values()), name
    assert set(v.model_schema()) == {f.name for f in dataclasses.fields(ModelSpec)} - {"options"}


def test_model_shapes_come_from_configs_not_weights() -> None:
    from akvq.models import ModelSpec
    from akvq.models.smollm2 import smollm2_location

    d, f = smollm2_location()
    assert dataclasses.astuple(v._gguf_shape(d, f))[:4] == (
        30,
        3,
        64,
        8192,
    )  # SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64, 8K
    tiny = v.model_shape(ModelSpec(name="t", source="tiny", tiny_kind="llava", tiny_head_dim=128), need=True)
    assert tiny is not None and dataclasses.astuple(tiny)[:4] == (4, 2, 128, 4096)
    hub = ModelSpec(name="h", source="hub", path="org/not-cached-anywhere")
    assert v.model_shape(hub, need=False) is None  # unknown without data checks: shape checks are skipped


def test_records_path(tmp_path: Path) -> None:
    assert v.check_records("r.jsonl", tmp_path) == tmp_path / "r.jsonl"
    assert v.check_records(str(tmp_path / "a" / "b" / "r.jsonl")) == tmp_path / "a" / "b" / "r.jsonl"
    (tmp_path / "x.yaml").write_text("a: 1\n")
    (tmp_path / "f").write_text("")
    for bad, why in [
        ("", "non-empty"),
        ("x.yaml", "must end in .jsonl"),
        (".", "is a directory"),
        ("f/r.jsonl", "not a writable directory"),
    ]:
        with pytest.raises(ConfigError, match=why):
            v.check_records(bad, tmp_path)
