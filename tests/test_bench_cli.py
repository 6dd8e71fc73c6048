"""The benchmark scripts' KEY=VALUE arguments: help, and one line for a malformed or unknown argument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from akvq.bench.cli import Check, config_name, count, counts, key_values, one_of

ROOT = Path(__file__).resolve().parents[1]


def test_key_values_parses_pairs_and_keeps_everything_after_the_first_equals_sign() -> None:
    got = key_values(["runs=akvq:79,fp16:14", "work_dir=a=b"], ("runs", "work_dir"), "doc", "prog")
    assert got == {"runs": "akvq:79,fp16:14", "work_dir": "a=b"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["rounds"], "argument 'rounds': expected KEY=VALUE"),
        (["=3"], "argument '=3'"),
        (["round=3"], "unknown key 'round'"),
    ],
)
def test_key_values_refuses_in_one_line_naming_the_argument_and_the_keys(
    argv: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as e:
        key_values(argv, ("rounds", "threads"), "doc", "prog")
    msg = str(e.value.code)
    assert msg.startswith("prog: ") and needle in msg and "rounds, threads" in msg and "\n" not in msg


def test_help_prints_the_docstring_and_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        key_values(["--help"], ("b", "a"), "  The script.  ", "prog")
    assert e.value.code == 0
    assert capsys.readouterr().out == "The script.\n\nkeys: a, b\n"


@pytest.mark.parametrize("script", ["bench_kernel.py", "bench_decode.py", "check_int8_numerics.py"])
def test_each_script_refuses_an_unknown_key_before_it_loads_anything(script: str) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "no_such_key=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line, no traceback
    assert "unknown key 'no_such_key'" in r.stderr


@pytest.mark.parametrize(
    ("check", "good", "bad", "why"),
    [
        (count(), "8192", "abc", "must be an integer >= 1"),
        (count(), "1", "0", "must be an integer >= 1"),
        (counts(), "1,2", "1,0", "must be integers >= 1, comma-separated"),
        (one_of("int8", "float", many=True), "int8,float", "int8,x", "must be some of int8, float"),
        (one_of("float32", "bfloat16"), "bfloat16", "fp8", "must be one of float32, bfloat16"),
        (config_name("model"), "smollm2-135m", "nope", "no such config; model has: llava,"),
    ],
)
def test_value_checks(check: Check, good: str, bad: str, why: str) -> None:
    assert check(good) is None
    got = check(bad)
    assert got is not None and got.startswith(why)


def test_a_value_its_key_cannot_take_is_one_line_naming_both() -> None:
    with pytest.raises(SystemExit) as e:
        key_values(["rounds=3", "threads=1,x"], ("rounds", "threads"), "doc", "prog", {"threads": counts()})
    assert e.value.code == "prog: threads='1,x': must be integers >= 1, comma-separated"


@pytest.mark.parametrize(
    ("script", "arg", "needle"),
    [
        ("bench_decode.py", "prompt_len=abc", "prompt_len='abc': must be an integer >= 1"),
        ("bench_decode.py", "runs=akvqq:8", "quant 'akvqq': no such config; quant has: akvq,"),
        ("bench_decode.py", "runs=akvq:x", "expected QUANT:BATCH"),
        ("bench_kernel.py", "builds=avx9", "builds='avx9': must be some of avx2, avx512, portable"),
        ("check_int8_numerics.py", "model=nope", "model='nope': no such config"),
    ],
)
def test_each_script_refuses_a_bad_value_before_it_loads_anything(script: str, arg: str, needle: str) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), arg], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line, no traceback
    assert needle in r.stderr
