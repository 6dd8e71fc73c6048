"""Paper artifacts (Tables I-IV, Figures 2-5, 8, 9) rebuilt from run records; see docs/artifacts.md.

`build.ARTIFACTS` lists them; `scripts/make_artifacts.py` and `notebooks/paper_artifacts.ipynb` use it.
"""

from __future__ import annotations

from akvq.artifacts.build import ARTIFACTS, BY_NAME, Context, Outcome, build_all, context, report

__all__ = ["ARTIFACTS", "BY_NAME", "Context", "Outcome", "build_all", "context", "report"]
