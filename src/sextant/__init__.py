"""Sextant: predict how large models train and serve on given hardware.

The questions, as functions (docs/api.md)::

    import sextant
    result = sextant.predict_train(gpus=16, tp=2)      # the built-in scenario, changed
    plan = sextant.plan_train("my-job.yaml", gpu_counts=[64, 128])
    served = sextant.predict_serve(model="llama-3.1-8b", gpu="h100-sxm", rate=5.0)

They load on first use (``sextant.api``), so ``import sextant`` stays cheap. The package is
layered from the bottom up (docs/architecture.md): spec <- catalog, cost <- resolve <- train,
serve <- plan <- validate <- cli.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("predict_train", "plan_train", "predict_serve", "plan_serve", "export_train", "export_serve",
        "validate_ledger", "train_scenario", "serve_scenario", "LEDGERS")


def __getattr__(name: str) -> Any:
    if name in _API:
        from sextant import api

        return getattr(api, name)
    raise AttributeError(f"module 'sextant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
