"""``validate memory``: predicted peak GPU memory against what training runs measured.

Every row of the memory ledger (data/memory.yaml) states a run, the peak one GPU reached and the
counter that measured it; the sweep ledger's nvidia-smi readings and out-of-memory runs join them.
Each counter is predicted as the memory model builds it (train/step.py ``PEAK_COUNTERS``):

- allocated: the tensors at the worst moment of the step (``torch.cuda.max_memory_allocated``);
- reserved: allocated plus the caching allocator's fragmentation, a fraction of it
  (``max_memory_reserved``);
- device: reserved plus what lives outside the allocator, the CUDA context and NCCL's buffers
  (nvidia-smi).

The headline is the model as ``predict train`` ships it: nothing in it was fitted on these rows
(fragmentation and runtime are the framework preset's or the defaults), so every figure is held
out. Beside it, a diagnostic: how much two global parameters, the fragmentation fraction and the
runtime's GiB, would recover if fitted (``fit_memory_parameters``: the log-space mean of measured
over allocated on the reserved rows, the mean remainder on the device rows), scored
leave-one-source-out. They are not adopted while they stand at their bounds or differ by source.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from sextant.catalog.models import get_model
from sextant.cost.memory import ALLOCATOR_OVERHEAD, RUNTIME_RESERVED_BYTES
from sextant.resolve.framework import framework_family
from sextant.spec.scenario import TrainScenario
from sextant.train.predict import build_context
from sextant.train.step import ALLOCATED_PARTS, PEAK_COUNTERS, evaluate
from sextant.units import GiB
from sextant.validate.ledger import CitedRow, load_rows, scenario_of
from sextant.validate.reports import NamedErrorSummary
from sextant.validate.sweep import load_sweeps

Counter = Literal["allocated", "reserved", "device"]
#: Bounds of the fit: a caching allocator holds 0-25% beyond its allocated peak, and the CUDA
#: context with NCCL's buffers takes 0.3-4 GiB.
FRAGMENTATION_BOUNDS = (0.0, 0.25)
RUNTIME_GIB_BOUNDS = (0.3, 4.0)


class MemoryRow(CitedRow):
    """One measured peak (or out-of-memory run) with its configuration and citation."""

    model: str
    model_overrides: dict[str, Any] = {}
    gpu: str
    gpus: int = Field(gt=0)
    gpus_per_node: int | None = None
    node: str | None = None
    network: str | None = None
    nics_per_node: int | None = None
    gpu_memory_gib: float | None = None
    framework: str
    strategy: dict[str, Any]
    workload: dict[str, Any]
    counter: Counter
    peak_gib: float | None = Field(default=None, gt=0)
    #: With an ``allocated`` peak, the reserved peak of the same run where the source gives both:
    #: the caching allocator's fragmentation measured, not inferred.
    reserved_gib: float | None = Field(default=None, gt=0)
    oom: bool = False
    quote: str = ""

    @model_validator(mode="after")
    def _measured(self) -> MemoryRow:
        if self.oom == (self.peak_gib is not None):
            raise ValueError("a memory row states either peak_gib or oom: true")
        if self.reserved_gib is not None and (self.counter != "allocated" or self.reserved_gib < self.peak_gib):
            raise ValueError("reserved_gib goes with an allocated peak and is at least that peak")
        return self

    def scenario(self) -> TrainScenario:
        model: Any = self.model
        if self.model_overrides:
            base = get_model(self.model)
            model = base.model_copy(update={**self.model_overrides, "name": f"{base.name} variant"}).model_dump()
        return scenario_of(self, model, self.gpus, self.strategy, self.workload, f"memory row {self.id}")


def load_memory_ledger(path: str | Path | None = None) -> list[MemoryRow]:
    return load_rows(MemoryRow, path, "memory.yaml")


def measured_fragmentation(rows: list[MemoryRow], framework: str | None = None) -> list[float]:
    """Reserved over allocated peak, less one, of every run that reports both (of ``framework``'s
    rows where given): the fragmentation a framework preset's ``allocator_overhead`` states."""
    return [r.reserved_gib / r.peak_gib - 1.0 for r in rows  # type: ignore[operator]
            if r.reserved_gib is not None and r.peak_gib is not None and framework in (None, r.framework)]


class _Measured(BaseModel):
    """What a memory observation and its result share: the run, its source and what was measured."""

    id: str
    group: str
    #: The framework preset's family (megatron, deepspeed, pytorch-native), for the bound's pools.
    family: str
    counter: Counter
    measured_gib: float | None
    oom: bool
    capacity_gib: float


class Observation(_Measured):
    """A measured peak and what the model predicts before the two global parameters apply."""

    allocated_gib: float
    #: The counter as ``predict train`` reports it (the preset's fragmentation and runtime).
    shipped_gib: float
    #: What ``predict train`` compares with the capacity (what must fit).
    shipped_device_gib: float


class MemoryParameters(BaseModel):
    fragmentation: float = ALLOCATOR_OVERHEAD
    runtime_gib: float = RUNTIME_RESERVED_BYTES / GiB

    def predict(self, allocated_gib: float, counter: Counter) -> float:
        reserved = allocated_gib * (1.0 + self.fragmentation)
        return {"allocated": allocated_gib, "reserved": reserved, "device": reserved + self.runtime_gib}[counter]


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def fit_memory_parameters(obs: Iterable[Observation], prior: MemoryParameters | None = None) -> MemoryParameters:
    """Fragmentation from the reserved rows (the geometric mean of measured over allocated, less
    one), then the runtime from the device rows (their mean remainder); the prior where no row of
    that counter is left. Both within their bounds."""
    prior = prior or MemoryParameters()
    measured = [o for o in obs if o.measured_gib is not None]
    reserved = [o for o in measured if o.counter == "reserved"]
    fragmentation = prior.fragmentation
    if reserved:
        mean_log = statistics.fmean(math.log(o.measured_gib / o.allocated_gib) for o in reserved)  # type: ignore[operator]
        fragmentation = _clamp(math.exp(mean_log) - 1.0, FRAGMENTATION_BOUNDS)
    device = [o for o in measured if o.counter == "device"]
    runtime = prior.runtime_gib
    if device:
        runtime = _clamp(statistics.fmean(o.measured_gib - o.allocated_gib * (1 + fragmentation)  # type: ignore[operator]
                                          for o in device), RUNTIME_GIB_BOUNDS)
    return MemoryParameters(fragmentation=fragmentation, runtime_gib=runtime)


def _predicted_gib(scenario: TrainScenario, counter: Counter) -> tuple[float, float, float, float]:
    """(allocated, the counter, what must fit, capacity) GiB as ``predict train`` builds them."""
    ctx, cand = build_context(scenario)
    ev = evaluate(ctx, cand)
    parts = {k: float(v[0]) / GiB for k, v in ev.memory_parts_bytes.items()}
    return (sum(parts[k] for k in ALLOCATED_PARTS), sum(parts[k] for k in PEAK_COUNTERS[counter]),
            float(ev.required_bytes[0]) / GiB, ev.capacity_bytes / GiB)


def observations(rows: list[MemoryRow] | None = None, *, with_sweeps: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> list[Observation]:
    """Every memory row (default: the built-in ledger) and, ``with_sweeps``, every sweep point
    with an nvidia-smi figure or an out-of-memory result, as observations."""
    rows = load_memory_ledger() if rows is None else rows
    todo: list[tuple[str, str, str, Counter, float | None, bool, TrainScenario]] = [
        (r.id, r.group, framework_family(r.framework), r.counter, r.peak_gib, r.oom, r.scenario()) for r in rows]
    if with_sweeps:
        for sweep in load_sweeps():
            for i, point in enumerate(sweep.points):
                if point.memory_gib is None and not point.oom:
                    continue
                todo.append((f"{sweep.id}.{i + 1}", sweep.group, framework_family(sweep.framework), "device",
                             point.memory_gib, point.oom, sweep.scenario(point)))
    out = []
    for done, (ident, group, family, counter, measured, oom, scenario) in enumerate(todo, 1):
        allocated, shipped, device, capacity = _predicted_gib(scenario, counter)
        out.append(Observation(id=ident, group=group, family=family, counter=counter, measured_gib=measured, oom=oom,
                               allocated_gib=allocated, shipped_gib=shipped, shipped_device_gib=device,
                               capacity_gib=capacity))
        if progress is not None:
            progress(done, len(todo))
    return out


class MemoryRowResult(_Measured):
    #: As ``predict train`` reports it, and with the two global parameters fitted with and
    #: without this row's source.
    predicted_gib: float
    predicted_fits: bool
    fitted_gib: float
    held_out_gib: float

    @property
    def error(self) -> float | None:
        return None if self.measured_gib is None else self.predicted_gib / self.measured_gib - 1.0

    @property
    def held_out_error(self) -> float | None:
        return None if self.measured_gib is None else self.held_out_gib / self.measured_gib - 1.0

    @property
    def fitted_error(self) -> float | None:
        return None if self.measured_gib is None else self.fitted_gib / self.measured_gib - 1.0


class MemoryReport(BaseModel):
    rows: list[MemoryRowResult]
    #: The model as shipped (nothing fitted on these rows), per source as well.
    shipped: NamedErrorSummary
    by_group: dict[str, NamedErrorSummary]
    #: Diagnostic: the two global parameters fitted on every row, their in-sample error, and the
    #: error of each source's rows with the values fitted without that source.
    parameters: MemoryParameters
    fitted_in_sample: NamedErrorSummary
    fitted_held_out: NamedErrorSummary
    #: Runs that ran out of memory / that ran, and how many of each the shipped model classifies
    #: right (the device counter above the GPU's capacity: does not fit).
    oom_runs: int
    oom_predicted: int
    ran_runs: int
    ran_predicted_to_fit: int


def cross_validate_memory(obs: list[Observation]) -> MemoryReport:
    """The shipped prediction of every row, and the diagnostic fit scored leave-one-source-out."""
    fitted = fit_memory_parameters(obs)
    held: dict[str, MemoryParameters] = {g: fit_memory_parameters([o for o in obs if o.group != g])
                                         for g in {o.group for o in obs}}
    results = [MemoryRowResult(
        id=o.id, group=o.group, family=o.family, counter=o.counter, measured_gib=o.measured_gib, oom=o.oom, predicted_gib=o.shipped_gib,
        predicted_fits=o.shipped_device_gib <= o.capacity_gib, fitted_gib=fitted.predict(o.allocated_gib, o.counter),
        held_out_gib=held[o.group].predict(o.allocated_gib, o.counter), capacity_gib=o.capacity_gib) for o in obs]
    measured = [r for r in results if r.measured_gib is not None]
    oom = [r for r in results if r.oom]
    ran = [r for r in results if not r.oom]
    return MemoryReport(
        rows=results, shipped=NamedErrorSummary.of_errors([(r.id, r.error) for r in measured]),  # type: ignore[misc]
        by_group={g: NamedErrorSummary.of_errors([(r.id, r.error) for r in measured if r.group == g])  # type: ignore[misc]
                  for g in sorted({r.group for r in measured})},
        parameters=fitted,
        fitted_in_sample=NamedErrorSummary.of_errors([(r.id, r.fitted_error) for r in measured]),  # type: ignore[misc]
        fitted_held_out=NamedErrorSummary.of_errors([(r.id, r.held_out_error) for r in measured]),  # type: ignore[misc]
        oom_runs=len(oom), oom_predicted=sum(not r.predicted_fits for r in oom),
        ran_runs=len(ran), ran_predicted_to_fit=sum(r.predicted_fits for r in ran))


def validate_memory(path: str | Path | None = None, *, with_sweeps: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> MemoryReport:
    rows = load_memory_ledger(path)
    return cross_validate_memory(observations(rows, with_sweeps=with_sweeps, progress=progress))
