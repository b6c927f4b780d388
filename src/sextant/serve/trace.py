"""Perfetto / Chrome trace of a simulation (JSON trace-event format, opens in ui.perfetto.dev).

One process per engine with its iterations as complete ("X") events on one track, and a
"requests" process with each request's queueing, prefill and decode phases as async spans.
Requests beyond ``max_requests`` are left out to keep the file openable; the metadata says so.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sextant.files import write_atomic, write_trace_events
from sextant.serve.requests import Requests
from sextant.serve.simulator import SimulationOutput

#: Columns of ``predict serve --requests-out``: one row per request, times in seconds from the
#: first arrival, latencies in milliseconds.
REQUEST_COLUMNS = ("request", "stage", "arrival_s", "first_token_s", "finish_s", "input_tokens", "output_tokens",
                   "ttft_ms", "e2e_ms", "tpot_ms")


def write_requests(requests: Requests, out: SimulationOutput, path: str | Path) -> int:
    """Write each request's arrival, first-token and finish times and token counts as CSV (the
    per-request view a benchmark client records); returns the number of rows."""
    t = out.table
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(REQUEST_COLUMNS)
    for rid in range(len(requests)):
        arrival, first, finish, n = float(requests.arrival_s[rid]), t.first[rid], t.finish[rid], t.out[rid]
        tpot = (finish - first) / (n - 1) * 1e3 if n > 1 else ""
        w.writerow((rid, "" if requests.stage is None else int(requests.stage[rid]), f"{arrival:.6f}",
                    f"{first:.6f}", f"{finish:.6f}", t.inp[rid], n, f"{(first - arrival) * 1e3:.3f}",
                    f"{(finish - arrival) * 1e3:.3f}", tpot if tpot == "" else f"{tpot:.3f}"))
    write_atomic(path, buffer.getvalue(), field="--requests-out")
    return len(requests)


def write_trace(out: SimulationOutput, path: str | Path, *, max_requests: int = 5000) -> int:
    """Write the trace; returns the number of events."""
    events: list[dict] = []
    for pid, (name, iterations) in enumerate(sorted(out.traces.items()), start=1):
        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})
        for it in iterations:
            label = "decode" if it.prefill_tokens == 0 else ("prefill" if it.decode_seqs == 0 else "mixed")
            events.append({"ph": "X", "pid": pid, "tid": 1, "name": label, "ts": it.start * 1e6,
                           "dur": it.duration * 1e6,
                           "args": {"decode_seqs": it.decode_seqs, "prefill_tokens": it.prefill_tokens,
                                    "prefill_seqs": it.prefill_seqs}})
    t = out.table
    req_pid = len(out.traces) + 1
    events.append({"ph": "M", "pid": req_pid, "name": "process_name", "args": {"name": "requests"}})
    shown = min(len(t.arrival), max_requests)
    for rid in range(shown):
        for name, start, end in (("queued+prefill", t.arrival[rid], t.first[rid]), ("decode", t.first[rid], t.finish[rid])):
            if end > start:
                common = {"pid": req_pid, "tid": 1, "cat": "request", "id": rid, "name": name}
                events.append({**common, "ph": "b", "ts": start * 1e6,
                               "args": {"request": rid, "input_tokens": t.inp[rid], "output_tokens": t.out[rid]}})
                events.append({**common, "ph": "e", "ts": end * 1e6})
    for rid, start, end in out.kv_transfers[:max_requests]:
        common = {"pid": req_pid, "tid": 2, "cat": "kv_transfer", "id": f"kv{rid}", "name": "kv transfer"}
        events.append({**common, "ph": "b", "ts": start * 1e6})
        events.append({**common, "ph": "e", "ts": end * 1e6})
    meta = {"requests_in_trace": shown, "requests_total": len(t.arrival)}
    write_trace_events(path, events, meta)
    return len(events)
