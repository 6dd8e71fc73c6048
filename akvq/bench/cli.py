"""KEY=VALUE arguments of the benchmark scripts (`bench_kernel.py`, `bench_decode.py`, `check_int8_numerics.py`).

They are not Hydra apps (they time one process and must not pay Hydra's start-up), so their arguments are parsed
here, once: `-h`/`--help` prints the script's docstring, and a malformed or unknown argument stops the script with
one line naming it and what is allowed, before anything loads."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence


def key_values(argv: Sequence[str], allowed: Iterable[str], doc: str | None, prog: str) -> dict[str, str]:
    """`argv`'s KEY=VALUE pairs; exits with the docstring on -h/--help, with one line on anything else."""
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
        out[key] = value
    return out
