"""Static batching: a batch of waiting requests is prefilled together, then decoded until its
longest request is done, finished sequences staying in the batch as padding; the next batch
starts when the engine is free (TensorRT-LLM's gptSessionBenchmark; ZeRO-Inference's and
FlexGen's generation loops). Blocks for prompt and output are reserved at admission.

The batch's decode steps are one run of decode-only iterations over the same sequences
(:meth:`~sextant.serve.iteration.IterationCost.decode_steps`), timed and accounted in order as
the continuous engine's runs are.
"""

from __future__ import annotations

import math

import numpy as np

from sextant.serve.engine import Engine, Iteration


class StaticEngine(Engine):
    """An engine whose every iteration plan is one whole static batch: prefill and all decodes."""

    def start(self, now: float, horizon: float = math.inf) -> float | None:
        """Admit the next batch at ``now`` and plan it to the end; the time its last step ends,
        or None when nothing waits or fits. (A static batch admits nothing while it runs, so the
        horizon does not cut it.)"""
        cfg, r, cost = self.cfg, self.req, self.cost
        batch = []
        while self.waiting and len(batch) < cfg.max_batch:
            rid = self.waiting[0]
            need = self._blocks(r.inp[rid] + r.out[rid])
            if need > self.free:
                break
            self.waiting.popleft()
            self._use(need)
            r.held[rid] = need
            batch.append(rid)
        if not batch:
            return None
        n = len(batch)
        prompt_tokens = sum(r.inp[rid] for rid in batch)
        steps = max(r.out[rid] for rid in batch) - 1
        # Prefill of the whole batch.
        g, ew, comm = cost.token_parts(prompt_tokens)
        attention = cost.launch_s + sum(cost.prefill_attention(r.inp[rid], 0.0, cost.efficiency_ratio(r.inp[rid]))
                                        for rid in batch)
        gemm = g + cost.head(n)
        device = gemm + ew + comm + attention
        device, _, wait, busy = cost.charge(device, prompt_tokens, 0.0, 0, prompt_tokens, 0.0)
        host = cost.host(device)
        self._account(gemm, ew, comm, attention, host, wait, busy)
        self.iterations += 1
        first_token_at = now + device + host
        if self.trace is not None:
            self.trace.append(Iteration(now, device + host, 0, prompt_tokens, n))
        # Decode steps j = 1..steps over all n sequences, attending to the prompts and j tokens each.
        step_end = [first_token_at]
        if steps > 0:
            it = cost.decode_steps(n, float(prompt_tokens) + n * np.arange(1, steps + 1))
            ends = np.cumsum(np.concatenate(([first_token_at], it.duration)))
            step_end = ends.tolist()
            self.seconds.add(steps, (it.gemm, it.elementwise, it.communication, it.attention, it.wait, it.host),
                             it.busy)
            self.iterations += steps
            if self.trace is not None:
                self.trace.extend(Iteration(start, float(d), n, 0, 0) for start, d in zip(step_end, it.duration))
        for rid in batch:
            r.first[rid] = first_token_at
        self._plan = ("static", batch, step_end)
        return step_end[-1]

    def complete(self, end: float) -> list[int]:
        """Free the batch's blocks; each request finished at the end of its last decode step."""
        plan = self._plan
        self._plan = None
        if plan is None:
            return []
        _, batch, step_end = plan
        r = self.req
        for rid in batch:
            self.free += r.held[rid]
            r.held[rid] = 0
            self._finish(rid, step_end[r.out[rid] - 1])
        return []
