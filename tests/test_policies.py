"""One policy loader for every entry point; policies are values; a toy method registered in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from conftest import tiny, tiny_inputs

from akvq import api
from akvq.errors import ConfigError
from akvq.policies import (
    POLICIES,
    LayerPlan,
    Policy,
    TensorPlan,
    make_policy,
    quant_config,
    quant_names,
    register,
)

QUANTS = quant_names()


@pytest.mark.parametrize("name", QUANTS)
def test_every_quant_config_means_one_policy_at_every_entry_point(name: str) -> None:
    """configs/quant/<name>.yaml through make_policy, the runner's plan, the lmms-eval model and the benchmark."""
    from omegaconf import OmegaConf

    from akvq import runner
    from akvq.bench import throughput
    from akvq.integrations.lmms_eval import AKVQLmms

    want = make_policy(name)
    assert dataclasses.asdict(want) == dataclasses.asdict(make_policy(quant_config(name)))
    cfg = OmegaConf.create(
        {
            "model": {"name": "tiny-llama", "source": "tiny", "tiny_kind": "llama", "tiny_head_dim": 32},
            "task": {"name": "ppl", "prompt_len": 64, "cont_len": 8, "windows": 1},
            "quant": quant_config(name),
            "compare": [],
        }
    )
    assert [p.policy for p in runner.plan(cfg, runner.Session(), check_data=False)] == [want]
    assert AKVQLmms(loaded=tiny("llama"), quant=name).policy == want
    assert throughput.make_policy(quant_config(name), want.hp_dtype) == want


def test_ablation_configs_resolve_their_defaults() -> None:
    """akvq_rtn & co. inherit from akvq through Hydra's `defaults:`; the lmms-eval path used to skip that."""
    assert make_policy("akvq_paper") == make_policy("akvq")
    rtn = make_policy("akvq_rtn")
    assert (rtn.hadamard, rtn.tsa, rtn.psa, rtn.num_pivots) == (False, False, False, 15)


def test_unknown_names_and_fields_are_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown quant config 'kivi3'; available: .*kivi2"):
        make_policy("kivi3")
    with pytest.raises(ConfigError, match=r"quant=kivi2: policy 'kivi' has no field\(s\) \['windw'\]"):
        make_policy("kivi2", windw=3)


def test_method_class_names_still_work_with_a_deprecation_line(caplog: pytest.LogCaptureFixture) -> None:
    from akvq.policies import loader

    loader._deprecated.cache_clear()  # the line is said once per process; this test must hear it
    with caplog.at_level("WARNING"):
        assert make_policy("kivi") == make_policy("kivi2")
    assert "kivi2" in caplog.text and "not a config name" in caplog.text


def test_one_policy_on_two_models_gives_each_its_own_pattern() -> None:
    """resolve_policy used to write the first model's layer pattern into the caller's policy."""
    policy = make_policy("akvq")
    llava, llama = tiny("llava").model, tiny("llama").model
    a = api.resolve_policy(llava, policy)
    llama._akvq_model_name = "model-without-a-pattern-file"  # -> all PSA
    try:
        b = api.resolve_policy(llama, policy)
    finally:
        llama._akvq_model_name = "tiny-llama"
    assert policy.layer_pattern is None and a is not policy and b is not policy
    assert a.layer_pattern == ["tsa", "tsa", "psa", "psa"]  # configs/layer_patterns/tiny-llava.yaml
    assert b.layer_pattern == ["psa"] * 4
    assert api.resolve_policy(llava, policy) == a


@dataclass
class ToyPolicy(Policy):
    """Test-only method: keys and values per token at `bits`, no window. A method is one class under `@register`
    (registered inside the test here, so other tests do not see it)."""

    name = "toy_test_only"
    bits: int = 4

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        t = TensorPlan(bits=self.bits, group_size=16, window=0)
        return LayerPlan(k=t, v=t)


def test_toy_policy_registered_in_one_place() -> None:
    register(ToyPolicy)
    try:
        loaded, inputs = tiny_inputs("llama")
        out, cache = api.generate(
            loaded.model, inputs, make_policy({"policy": "toy_test_only"}), max_new_tokens=3
        )
        assert cache.layers[0].k.n_q > 0 and cache.memory_report().effective_bits < 16
    finally:
        POLICIES.pop("toy_test_only")


def test_roles_in_every_layer() -> None:
    """akvq_roles_v1_t4 (issue #12's vision x text grid): every layer TSA, vision rows 1-bit, text rows 4-bit."""
    from akvq.cache.store import LOW, TEXT

    loaded, inputs = tiny_inputs("llava")
    policy = make_policy("akvq_roles_v1_t4", window=4)
    assert api.resolve_policy(loaded.model, policy).layer_pattern is None  # no pattern file needed
    _, cache = api.generate(loaded.model, inputs, policy, max_new_tokens=2)
    for layer in cache.layers:
        assert layer.plan.pattern == "tsa" and not layer.plan.protect_pivots
        for st in (layer.k, layer.v):
            assert st.tables[LOW].bits == 1 and st.tables[TEXT].bits == 4
    with pytest.raises(ConfigError, match="roles_all_layers"):
        make_policy("akvq_roles_v1_t4", tsa=False)
