"""The requests a serving simulation replays: arrival times and token lengths.

Three sources, one shape (:class:`Requests`, sorted by arrival):
- fixed or distributed lengths with every request at time 0 (offline, as MLPerf Offline and
  trtllm-bench measure) or with Poisson / gamma arrivals at a mean rate (gamma with shape k has a
  coefficient of variation 1/sqrt(k): k < 1 is burstier than Poisson);
- a trace file, CSV with a header or JSON Lines, with the columns ``arrival_s``,
  ``input_tokens`` and ``output_tokens`` (aliases: ``timestamp``/``arrival_time``,
  ``prompt_tokens``/``input_len``, ``completion_tokens``/``output_len``).

A trace is checked row by row; the first problem is reported with its line number.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sextant.errors import SpecError
from sextant.files import read_user_text
from sextant.spec.serving import LengthSpec, ServeWorkload

ALIASES = {
    "arrival_s": ("arrival_s", "arrival_time", "timestamp", "arrival"),
    "input_tokens": ("input_tokens", "prompt_tokens", "input_len", "input_length"),
    "output_tokens": ("output_tokens", "completion_tokens", "output_len", "output_length"),
}


@dataclass(frozen=True)
class Requests:
    arrival_s: np.ndarray  # float64, non-decreasing
    input_tokens: np.ndarray  # int64 >= 1
    output_tokens: np.ndarray  # int64 >= 1
    #: Load stage of each request (int64), when the workload runs in stages; else None.
    stage: np.ndarray | None = None
    #: Shared-prefix group of each request (int64), when prompts share prefixes; else None.
    prefix_group: np.ndarray | None = None
    #: Tokens of the shared prefix at the start of every prompt with a group.
    prefix_tokens: int = 0
    #: Which of the workload's repeated whole prompts each request sends (int64), when prompts
    #: repeat; else None.
    prompt_id: np.ndarray | None = None
    #: Closed loop: requests in flight at once, each next one sent when one finishes (its
    #: ``arrival_s`` is then set by the simulation); None: open loop at ``arrival_s``.
    concurrency: int | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    def head(self, n: int) -> Requests:
        """The first ``n`` requests."""
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:n]

        return Requests(self.arrival_s[:n], self.input_tokens[:n], self.output_tokens[:n], cut(self.stage),
                        cut(self.prefix_group), self.prefix_tokens, cut(self.prompt_id), self.concurrency)

    @property
    def offline(self) -> bool:
        return bool(len(self) and self.arrival_s[-1] == 0.0)


def _lengths(spec: int | LengthSpec, n: int, rng: np.random.Generator, name: str) -> np.ndarray:
    if isinstance(spec, int):
        if spec < 1:
            raise SpecError(f"must be at least 1 token (got {spec})", field=name)
        return np.full(n, spec, dtype=np.int64)
    mean, sd = spec.mean, spec.stdev
    if spec.distribution == "fixed":
        x = np.full(n, mean)
    elif spec.distribution == "uniform":
        half = sd * np.sqrt(3.0)  # a uniform of this half-width has this standard deviation
        x = rng.uniform(mean - half, mean + half, n)
    elif spec.distribution == "exponential":
        x = rng.exponential(mean, n)
    else:  # lognormal with the given mean and standard deviation
        if sd <= 0:
            raise SpecError("a lognormal length needs stdev > 0", field=name)
        sigma2 = np.log1p((sd / mean) ** 2)
        x = rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), n)
    hi = spec.max if spec.max is not None else np.inf
    return np.clip(np.rint(x), spec.min, hi).astype(np.int64)


#: Most requests a synthetic workload may generate (a million-request trace simulates in about
#: a minute; more is a typo, not a study).
MAX_SYNTHETIC_REQUESTS = 10_000_000


def _gaps(workload: ServeWorkload, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds between ``n`` arrivals at ``rate``: evenly spaced (constant), exponential
    (Poisson) or gamma with shape ``burstiness``."""
    if workload.arrival == "constant":
        return np.full(n, 1.0 / rate)
    shape = 1.0 if workload.arrival == "poisson" else workload.burstiness
    return rng.gamma(shape, 1.0 / (shape * rate), n)


def request_count(workload: ServeWorkload) -> int:
    """Requests a synthetic workload sends: ``num_requests``, or what its stages send."""
    n = sum(workload.stage_requests) if workload.stages else workload.num_requests
    if n > MAX_SYNTHETIC_REQUESTS:
        raise SpecError(f"the workload sends {n:,} requests; at most {MAX_SYNTHETIC_REQUESTS:,} are simulated",
                        field="stages" if workload.stages else "num_requests")
    return n


def _arrivals(workload: ServeWorkload, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrival times and, with stages, the stage of each request. Each stage starts at the end of
    the previous one and sends rate x duration requests, the first at its start."""
    if workload.stages:
        counts = workload.stage_requests
        parts, start = [], 0.0
        for stage, n in zip(workload.stages, counts):
            gaps = _gaps(workload, stage.rate, n, rng)
            parts.append(start + np.cumsum(gaps) - gaps[0])
            start += stage.duration_s
        stage_of = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return np.concatenate(parts), stage_of
    n = workload.num_requests
    if workload.rate is None:
        return np.zeros(n), None
    gaps = _gaps(workload, workload.rate, n, rng)
    return np.cumsum(gaps) - gaps[0], None


def synthetic(workload: ServeWorkload) -> Requests:
    """Requests drawn from the workload's distributions with its seed."""
    rng = np.random.default_rng(workload.seed)
    n = request_count(workload)
    inputs = _lengths(workload.input_len, n, rng, "input_len")
    outputs = _lengths(workload.output_len, n, rng, "output_len")
    arrivals, stage = _arrivals(workload, rng)
    prefix = workload.shared_prefix
    if workload.concurrency is not None:
        return Requests(arrivals, inputs, outputs, concurrency=workload.concurrency)
    if prefix is None:
        return Requests(arrivals, inputs, outputs, stage)
    if prefix.prompts_per_group is None:
        groups = rng.integers(0, prefix.groups, n, dtype=np.int64)
        return Requests(arrivals, np.maximum(inputs, prefix.tokens + 1), outputs, stage, groups, prefix.tokens)
    # A fixed set of prompts (with their lengths: the first draws), sent in turn in a shuffled order.
    distinct = prefix.groups * prefix.prompts_per_group
    if distinct <= n:
        prompt = rng.permutation(distinct)[np.arange(n) % distinct]
    else:  # more prompts than requests: each request draws one (a repeat is then rare)
        prompt = rng.integers(0, distinct, n, dtype=np.int64)
    return Requests(arrivals, np.maximum(inputs[prompt % n], prefix.tokens + 1), outputs[prompt % n], stage,
                    prompt // prefix.prompts_per_group, prefix.tokens, prompt)


def _columns(header: list[str], path: str) -> dict[str, str]:
    found = {}
    lower = {h.strip().lower(): h for h in header if isinstance(h, str)}
    for key, names in ALIASES.items():
        match = next((lower[n] for n in names if n in lower), None)
        if match is None:
            raise SpecError(f"{path}: missing column {key!r} (or one of {', '.join(names[1:])}); "
                            f"found {', '.join(lower) or 'none'}", field="trace")
        found[key] = match
    return found


def _rows(path: Path) -> list[tuple[int, dict]]:
    text = read_user_text(path, field="trace", kind="trace")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SpecError(f"{path}:{i}: not a JSON object", field="trace") from None
            if not isinstance(obj, dict):
                raise SpecError(f"{path}:{i}: not a JSON object", field="trace")
            rows.append((i, obj))
        return rows
    reader = csv.DictReader(text.splitlines())
    return [(i + 2, row) for i, row in enumerate(reader)]


def load_trace(path: str, *, limit: int | None = None) -> Requests:
    """Requests from a CSV or JSONL trace; ``limit`` keeps the first ``limit`` requests."""
    p = Path(path)
    rows = _rows(p)
    if not rows:
        raise SpecError(f"{path}: no requests", field="trace")
    cols = _columns(list(rows[0][1].keys()), path)
    arrivals, inputs, outputs = [], [], []
    previous = 0.0
    for line, row in rows[: limit or None]:
        try:
            t = float(row[cols["arrival_s"]])
            i_tok = float(row[cols["input_tokens"]])
            o_tok = float(row[cols["output_tokens"]])
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"{path}:{line}: arrival_s, input_tokens and output_tokens must be numbers",
                            field="trace") from None
        if not np.isfinite(t) or t < 0:
            raise SpecError(f"{path}:{line}: negative or non-finite arrival time {t}", field="trace")
        if t < previous:
            raise SpecError(f"{path}:{line}: arrivals are not sorted ({t} after {previous}); sort the trace "
                            "by arrival time", field="trace")
        for name, v in (("input_tokens", i_tok), ("output_tokens", o_tok)):
            if not np.isfinite(v) or v < 1 or v != int(v):
                raise SpecError(f"{path}:{line}: {name} must be a whole number >= 1 (got {v:g})", field="trace")
        previous = t
        arrivals.append(t)
        inputs.append(int(i_tok))
        outputs.append(int(o_tok))
    a = np.asarray(arrivals)
    return Requests(a - a[0] if a[0] > 0 else a, np.asarray(inputs, np.int64), np.asarray(outputs, np.int64))


def requests_for(workload: ServeWorkload) -> Requests:
    if workload.trace:
        limit = workload.num_requests if "num_requests" in workload.model_fields_set else None
        return load_trace(workload.trace, limit=limit)
    return synthetic(workload)
