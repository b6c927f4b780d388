"""KV-cache capacity: the tokens a serving engine's cache holds, against the engines' own logs.

Each row of data/kv-capacity.yaml is an engine's startup log (vLLM's GPU blocks or KV cache size,
SGLang's ``max_total_num_tokens``) with its model, GPU, tensor parallelism and memory settings.
The prediction is :func:`sextant.serve.deploy.deploy`'s instance sized by the engine preset's
rule (``kv_cache_budget``). Two parameters per engine preset are fitted by
scripts/fit_kv_capacity.py: the bytes per logit of vLLM V1's dummy sampler run and the runtime
held outside PyTorch; the report scores each source with them fitted without that source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from sextant.catalog.frameworks import get_serving_framework
from sextant.serve.deploy import deploy_scenario
from sextant.spec.serving import ServeScenario, parse_serve_scenario
from sextant.validate.ledger import CitedRow, load_rows
from sextant.validate.reports import NamedErrorSummary


class KVRow(CitedRow):
    """An engine's logged KV-cache capacity with its model, GPU and memory settings."""

    framework: str
    model: str
    gpu: str
    tp: int = Field(default=1, gt=0)
    gpu_memory_gib: float | None = Field(default=None, gt=0)
    precision: str = "bf16"
    kv_precision: str | None = None
    scheduler: dict[str, Any] = {}
    measured_tokens: int = Field(gt=0)
    measured_split_gib: dict[str, float] = {}
    quote: str = ""

    def scenario(self, scheduler_overrides: dict[str, Any] | None = None) -> ServeScenario:
        hardware: dict[str, Any] = {"gpu": self.gpu, "gpus": self.tp}
        if self.gpu_memory_gib is not None:
            hardware["gpu_memory_gib"] = self.gpu_memory_gib
        return parse_serve_scenario({
            "model": self.model, "framework": self.framework, "hardware": hardware,
            "deployment": {"tp": self.tp, "precision": self.precision,
                           **({"kv_precision": self.kv_precision} if self.kv_precision else {})},
            # What the row states wins: an engine version's own behaviour is a fact of the row.
            "scheduler": {**(scheduler_overrides or {}), **self.scheduler},
            "workload": {"input_len": 16, "output_len": 16, "num_requests": 1}}, source=f"KV row {self.id}")


def load_kv_ledger(path: str | Path | None = None) -> list[KVRow]:
    return load_rows(KVRow, path, "kv-capacity.yaml")


def predicted_tokens(row: KVRow, scheduler_overrides: dict[str, Any] | None = None) -> int:
    """The engine-wide KV token capacity the engine rule gives for ``row``."""
    dep = deploy_scenario(row.scenario(scheduler_overrides), 1, 1)
    return dep.instance.kv_capacity_tokens * dep.instance.engines_per_replica


class KVRowResult(BaseModel):
    id: str
    group: str
    framework: str
    measured_tokens: int
    predicted_tokens: int
    held_out_tokens: int

    @property
    def error(self) -> float:
        return self.predicted_tokens / self.measured_tokens - 1.0

    @property
    def held_out_error(self) -> float:
        return self.held_out_tokens / self.measured_tokens - 1.0


#: The engine parameters fitted per preset (serving_frameworks.yaml): the runtime held outside
#: PyTorch where no log prints it (vLLM V0, SGLang), and the bytes per logit of vLLM V1's dummy
#: sampler run (its runtime is the non_torch_memory its logs print).
FITTED = {"vllm-2024": ("runtime_gib",), "vllm-v1-0.11": ("sampler_profile_bytes",), "sglang-2025": ("runtime_gib",)}
#: Bounds of the fit: a CUDA context with NCCL takes 0-4 GiB; a sampler holds 0-64 bytes per logit.
BOUNDS = {"runtime_gib": (0.0, 4.0), "sampler_profile_bytes": (0.0, 64.0)}
#: What a parameter is without data: no runtime, and the sampler's fp32 logits only.
PRIORS = {"runtime_gib": 0.0, "sampler_profile_bytes": 4.0}


class _Linear(BaseModel):
    """A row's predicted tokens as a linear function of the fitted parameters (block rounding aside):
    tokens = base + sum(slope[p] * value[p])."""

    id: str
    group: str
    framework: str
    measured: int
    base: float
    slopes: dict[str, float]

    def tokens(self, values: dict[str, float]) -> float:
        return self.base + sum(self.slopes[p] * values.get(p, 0.0) for p in self.slopes)


def _linearize(row: KVRow) -> _Linear:
    """Predicted tokens at zero parameters, and their change per unit of each fitted parameter."""
    params = FITTED.get(row.framework, ())
    zero = {p: 0.0 for p in params}
    base = float(predicted_tokens(row, zero))
    slopes = {p: float(predicted_tokens(row, {**zero, p: 1.0})) - base for p in params}
    return _Linear(id=row.id, group=row.group, framework=row.framework, measured=row.measured_tokens, base=base,
                   slopes=slopes)


def fit_engine(lines: list[_Linear], params: tuple[str, ...], prior: dict[str, float]) -> dict[str, float]:
    """Least squares on the relative error of the rows' tokens, each parameter within BOUNDS; the
    prior where the rows left do not determine the parameters (none left, or too few)."""
    params = tuple(p for p in params if any(ln.slopes[p] for ln in lines))
    if not params:
        return dict(prior)
    a = np.array([[ln.slopes[p] / ln.measured for p in params] for ln in lines])
    b = np.array([1.0 - ln.base / ln.measured for ln in lines])
    if np.linalg.matrix_rank(a) < len(params):
        return dict(prior)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    return {**prior, **{p: float(min(max(v, BOUNDS[p][0]), BOUNDS[p][1])) for p, v in zip(params, x)}}


def _preset_values(framework: str) -> dict[str, float]:
    sched = get_serving_framework(framework).get("scheduler", {})
    return {p: float(sched.get(p, 0.0)) for p in FITTED.get(framework, ())}


class KVReport(BaseModel):
    rows: list[KVRowResult]
    #: Per preset: the values the preset ships and those fitted on every row now.
    shipped: dict[str, dict[str, float]]
    fitted: dict[str, dict[str, float]]
    #: Every row as the presets ship, and with its preset's parameters fitted without its source.
    as_shipped: NamedErrorSummary
    held_out: NamedErrorSummary


def cross_validate_kv(rows: list[KVRow] | None = None) -> KVReport:
    """Every row as the presets ship it, and each source's rows with its preset's parameters fitted
    on the other sources' rows (the parameters' priors where none is left)."""
    rows = load_kv_ledger() if rows is None else rows
    lines = [_linearize(r) for r in rows]
    shipped = {f: _preset_values(f) for f in sorted({r.framework for r in rows})}
    fitted = {f: fit_engine([ln for ln in lines if ln.framework == f], FITTED.get(f, ()),
                            {p: PRIORS[p] for p in FITTED.get(f, ())}) for f in shipped}
    results = []
    for row, line in zip(rows, lines):
        others = [ln for ln in lines if ln.framework == row.framework and ln.group != row.group]
        params = FITTED.get(row.framework, ())
        held = fit_engine(others, params, {p: PRIORS[p] for p in params})
        results.append(KVRowResult(id=row.id, group=row.group, framework=row.framework, measured_tokens=row.measured_tokens,
                                   predicted_tokens=predicted_tokens(row), held_out_tokens=round(line.tokens(held))))
    return KVReport(rows=results, shipped=shipped, fitted=fitted,
                    as_shipped=NamedErrorSummary.of_errors([(r.id, r.error) for r in results]),
                    held_out=NamedErrorSummary.of_errors([(r.id, r.held_out_error) for r in results]))
