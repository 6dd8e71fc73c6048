"""Count the operations that make a CUDA host wait for the device, on any device (a CPU run counts them too).

Why: a decode step that reads a value back (`.item()`, `bool(t)`, `.tolist()`, a boolean mask, `nonzero`,
`bincount`) drains the GPU's queue there, so the host's launches and the device's kernels stop overlapping; the first
GPU run counted ~316 such waits a step over LLaVA-7B's 32 layers (results/efficiency/gpu/README.md). The same Python
runs on the CPU, so this counter, a dispatch mode, finds them in CI without a GPU (`tests/test_syncs.py`)."""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result the host must see (a scalar, or an output whose size depends on the data) on a CUDA tensor.
_SYNC_OPS = {
    "aten.nonzero.default",
    "aten.nonzero_numpy.default",
    "aten.masked_select.default",
    "aten.bincount.default",  # CUDA finds the largest value first
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",  # without output_size
}


def _bool_index(args: Any) -> bool:
    """`x[mask]` / `x[mask] = v`: a boolean index becomes `nonzero` inside the op."""
    idx = args[1] if len(args) > 1 else None
    return isinstance(idx, (list, tuple)) and any(
        torch.is_tensor(i) and i.dtype == torch.bool for i in idx if i is not None
    )


# Tensor methods that read a value back to Python. Wrapped for the block as well as seen in dispatch: under
# `torch.inference_mode()` a CPU tensor's `item()` and `bool()` reach no dispatch mode, and `tolist()` never does.
_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as s: ...` then `s.total`, `s.by_site` (the innermost akvq frame of each, with its op)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_site: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}
        self._own: dict[str, bool] = {}
        self._reading = False

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def _note(self, op: str) -> None:
        site = "?"
        for fr in reversed(traceback.extract_stack()[:-2]):
            if "/akvq/" in fr.filename and not fr.filename.endswith("syncs.py"):
                site = f"{fr.filename.rsplit('/akvq/', 1)[1]}:{fr.lineno} {fr.name}"
                break
        self.by_site[f"{site} [{op}]"] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if name == "aten._local_scalar_dense.default":
            if not self._reading:  # a read inside another op (the wrapped methods count their own)
                self._note("_local_scalar_dense")
        elif name in _SYNC_OPS or (
            name in ("aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default")
            and _bool_index(args)
        ):
            self._note(name.removeprefix("aten.").removesuffix(".default"))
        return func(*args, **(kwargs or {}))

    def _wrap(self, method: str) -> Any:
        orig, mode = self._saved[method], self

        def read(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            if mode._reading:
                return orig(t, *a, **k)
            mode._note(method.strip("_"))
            mode._reading = True
            try:
                return orig(t, *a, **k)
            finally:
                mode._reading = False

        return read

    def __enter__(self) -> HostSyncs:
        for m in _READS:
            self._saved[m] = getattr(torch.Tensor, m)
            self._own[m] = m in vars(torch.Tensor)  # else inherited from the C base: deleted again after
            setattr(torch.Tensor, m, self._wrap(m))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for m, f in self._saved.items():
            if self._own[m]:
                setattr(torch.Tensor, m, f)
            else:
                delattr(torch.Tensor, m)
        super().__exit__(*exc)
