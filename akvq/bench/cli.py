"""KEY=VALUE arguments of the benchmark scripts (`bench_kernel.py`, `bench_decode.py`, `check_int8_numerics.py`).

They are not Hydra apps (they time one process and must not pay Hydra's start-up), so their arguments are parsed
here, once: `-h`/`--help` prints the script's docstring, and a malformed or unknown argument, or a value its key
cannot take, stops the script with one line naming it and what is allowed, before anything loads."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

from akvq.runner.plan import available

# A value's check: the problem as `must be ...`, or None when the value is fine.
Check = Callable[[str], str | None]


def count(low: int = 1) -> Check:
    return lambda v: None if v.isdigit() and int(v) >= low else f"must be an integer >= {low}"


def counts(low: int = 1) -> Check:
    """A comma list of integers (`threads=1,2`)."""
    one = count(low)
    return lambda v: (
        None if all(one(x) is None for x in v.split(",")) else f"must be integers >= {low}, comma-separated"
    )


def one_of(*choices: str, many: bool = False) -> Check:
    """One of `choices` (with `many`, a comma list of them)."""

    def check(v: str) -> str | None:
        ok = all(x in choices for x in v.split(",")) if many else v in choices
        return None if ok else f"must be {'some' if many else 'one'} of {', '.join(choices)}"

    return check


def config_name(group: str) -> Check:
    """The name of a config under configs/GROUP (`model=smollm2-135m`), as run.py takes it."""
    names = available(group)
    return lambda v: None if v in names else f"no such config; {group} has: {', '.join(names)}"


def key_values(
    argv: Sequence[str],
    allowed: Iterable[str],
    doc: str | None,
    prog: str,
    checks: Mapping[str, Check] | None = None,
) -> dict[str, str]:
    """`argv`'s KEY=VALUE pairs; exits with the docstring on -h/--help, with one line on anything else (`checks`:
    a key's value check, run on the values given)."""
    keys = sorted(set(allowed))
    if any(a in ("-h", "--help") for a in argv):
        print((doc or "").strip())
        print(f"\nkeys: {', '.join(keys)}")
        sys.exit(0)
    out: dict[str, str] = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or not key:
            sys.exit(f"{prog}: argument {a!r}: expected KEY=VALUE with KEY one of {', '.join(keys)}")
        if key not in keys:
            sys.exit(f"{prog}: unknown key {key!r}: allowed {', '.join(keys)}")
        why = (checks or {}).get(key, lambda _: None)(value)
        if why:
            sys.exit(f"{prog}: {key}={value!r}: {why}")
        out[key] = value
    return out
