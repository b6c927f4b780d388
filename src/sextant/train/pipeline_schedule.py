"""The pipeline schedule of one training step, from its prediction: the 1F1B order
(PipeDream-Flush; Narayanan et al., "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", SC 2021, section 2.2) played out stage by stage, so the bubbles
appear where the order puts them. ``predict train --trace-out`` writes it as a Perfetto trace and
``--plot`` draws it.

The drawn step divides the predicted work per micro-batch (the step less the bubble, the
data-parallel communication, the optimizer and offload waits) as 1:2 between forward and
backward, the backward carrying any recomputation; interleaved schedules are drawn as plain
1F1B over pp stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sextant.files import write_trace_events

if TYPE_CHECKING:
    from sextant.train.result import TrainResult

@dataclass(frozen=True)
class Slot:
    """One micro-batch's forward (``F``) or backward (``B``) on one pipeline stage."""

    stage: int
    kind: str
    microbatch: int
    start: float
    end: float


def one_f_one_b(stages: int, microbatches: int, forward_s: float, backward_s: float) -> list[Slot]:
    """The 1F1B schedule: stage s runs ``stages - s - 1`` warm-up forwards, then alternates one
    forward and one backward, then drains its backwards. A forward waits for the previous stage's
    forward of that micro-batch, a backward for the next stage's backward."""
    order = []
    for s in range(stages):
        warm = min(stages - s - 1, microbatches)
        ops = [("F", m) for m in range(warm)]
        f, b = warm, 0
        while f < microbatches or b < microbatches:
            if f < microbatches:
                ops.append(("F", f))
                f += 1
            if b < f:
                ops.append(("B", b))
                b += 1
        order.append(ops)
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * stages
    position = [0] * stages
    slots = []
    while any(position[s] < len(order[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if position[s] == len(order[s]):
                continue
            kind, m = order[s][position[s]]
            after = (s - 1, "F", m) if kind == "F" else (s + 1, "B", m)
            first = (kind == "F" and s == 0) or (kind == "B" and s == stages - 1)
            if kind == "B" and first:
                after = (s, "F", m)
            if after not in done and not (kind == "F" and s == 0):
                continue
            start = max(free[s], done.get(after, 0.0))
            end = start + (forward_s if kind == "F" else backward_s)
            done[(s, kind, m)] = free[s] = end
            slots.append(Slot(s, kind, m, start, end))
            position[s] += 1
            progressed = True
        if not progressed:  # pragma: no cover - the order above always has a runnable head
            raise RuntimeError("1F1B schedule deadlocked")
    return slots


def step_schedule(result: TrainResult) -> list[Slot]:
    """The 1F1B schedule of ``result``'s step (see the module docstring)."""
    parts = result.time_breakdown_s
    outside = sum(parts.get(k, 0.0) for k in ("pipeline_bubble", "dp_comm", "optimizer", "offload_wait"))
    microbatches = max(int(round(result.num_microbatches)), 1)
    per_microbatch = max(result.step_time_s - outside, 0.0) / microbatches
    return one_f_one_b(result.pp, microbatches, per_microbatch / 3, 2 * per_microbatch / 3)


def write_schedule_trace(result: TrainResult, path: str) -> int:
    """Write the step's schedule as a Chrome/Perfetto trace (one track per pipeline stage, the
    optimizer step after the last backward); returns the number of events."""
    slots = step_schedule(result)
    events: list[dict] = [{"ph": "M", "pid": 1, "name": "process_name",
                           "args": {"name": f"{result.model}: 1F1B, pp {result.pp}"}}]
    for stage in range(result.pp):
        events.append({"ph": "M", "pid": 1, "tid": stage, "name": "thread_name", "args": {"name": f"stage {stage}"}})
    for slot in slots:
        events.append({"ph": "X", "pid": 1, "tid": slot.stage, "name": f"{slot.kind}{slot.microbatch}",
                       "cat": "forward" if slot.kind == "F" else "backward",
                       "ts": slot.start * 1e6, "dur": (slot.end - slot.start) * 1e6})
    end = max(slot.end for slot in slots)
    optimizer = result.time_breakdown_s.get("optimizer", 0.0)
    for stage in range(result.pp):
        events.append({"ph": "X", "pid": 1, "tid": stage, "name": "optimizer", "cat": "optimizer",
                       "ts": end * 1e6, "dur": optimizer * 1e6})
    meta = {"microbatches": int(round(result.num_microbatches)), "step_time_s": result.step_time_s,
            "drawn": "forward:backward 1:2 of the predicted work per micro-batch; interleaving drawn as plain 1F1B"}
    write_trace_events(path, events, meta)
    return len(events)
