"""``validate plan``: does the planner rediscover what the authors of each published run chose?

For every ledger row, the planner searches the same model, GPU count, batch, sequence length,
precision and framework preset; the row's published configuration is then located in the
planner's ranking (throughput objective). A good planner ranks the published configuration high
(issue target: top 10%) and finds a best configuration predicted at least as fast. Rows that
publish a deliberately weak baseline (ZeRO-3 without model parallelism, SC21 Table 2) are
reported like the others; their low rank is the paper's point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from sextant.plan.search import evaluate_table, fixed_strategy, rank_rows, scenario_for, score_space
from sextant.plan.space import SearchSpace, enumerate_space, restrict_to_framework
from sextant.spec.strategy import RECOMPUTE_CODES, layout_label
from sextant.train.predict import apply_framework, build_context, resolve_context
from sextant.train.step import evaluate
from sextant.validate.ledger import load_ledger

KEYS = ("dp", "tp", "pp", "cp", "ep", "vpp", "zero", "micro_batch", "recompute", "sequence_parallel")


class RediscoveryRow(BaseModel):
    id: str
    model: str
    gpus: int
    published_config: str
    rank: int
    feasible: int
    percentile: float
    in_top_10_percent: bool
    published_step_time_s: float
    best_step_time_s: float
    best_config: str
    best_at_least_as_fast: bool
    #: The same, among configurations with the published recomputation policy (papers such as
    #: SC21 fix it as an experimental condition rather than choose it per run).
    rank_same_recompute: int
    feasible_same_recompute: int
    in_top_10_percent_same_recompute: bool


class RediscoveryReport(BaseModel):
    rows: list[RediscoveryRow]
    in_top_10_percent: int
    in_top_10_percent_same_recompute: int
    best_at_least_as_fast: int


def _describe(row: dict) -> str:
    names = {v: k for k, v in RECOMPUTE_CODES.items()}
    layout = layout_label(row["dp"], row["tp"], row["pp"], row["cp"], row["ep"], row["vpp"],
                          sequence_parallel=bool(row["sequence_parallel"]))
    return f"{layout} zero{row['zero']} mb{row['micro_batch']} {names[row['recompute']]}"


def rediscover_row(row, space: SearchSpace) -> RediscoveryRow:
    scenario, _ = apply_framework(row.scenario())
    space = restrict_to_framework(space, scenario.framework)
    ctx_pub, cand_pub = build_context(scenario)
    published = evaluate(ctx_pub, cand_pub)
    ctx = resolve_context(scenario_for(scenario, row.gpus, fixed_strategy(scenario)))
    sp = enumerate_space(ctx.model, row.gpus, ctx.cluster.gpus_per_node, ctx.workload, space)
    ev = evaluate_table(ctx, sp.candidates, None)
    fits, score = score_space(ev, "throughput", row.gpus, ctx.cluster.gpu.tdp_w, space.headroom)
    pub_score = float(published.tokens_per_s[0])
    order = rank_rows(score, ev.memory_bytes, sp.candidates)
    feasible = int(fits.sum())
    # Rank: 1 + configurations strictly faster (ties count in the published one's favour).
    rank = 1 + int(np.sum(score > pub_score * (1 + 1e-9)))
    same = sp.candidates.recompute == cand_pub.recompute[0]
    feasible_same = int((fits & same).sum())
    rank_same = 1 + int(np.sum((score > pub_score * (1 + 1e-9)) & same))
    best = order[0]
    best_step = float(ev.step_time_s[best])
    pub_step = float(published.step_time_s[0])
    return RediscoveryRow(
        id=row.id, model=row.model, gpus=row.gpus, published_config=_describe(cand_pub.row(0)),
        rank=rank, feasible=feasible, percentile=rank / max(feasible, 1),
        in_top_10_percent=rank <= max(1, int(np.ceil(0.10 * feasible))),
        published_step_time_s=pub_step, best_step_time_s=best_step,
        best_config=_describe(sp.candidates.row(int(best))),
        best_at_least_as_fast=best_step <= pub_step * (1 + 1e-9),
        rank_same_recompute=rank_same, feasible_same_recompute=feasible_same,
        in_top_10_percent_same_recompute=rank_same <= max(1, int(np.ceil(0.10 * feasible_same))),
    )


def rediscover(path: str | Path | None = None, space: SearchSpace | None = None) -> RediscoveryReport:
    space = space or SearchSpace()
    rows = [rediscover_row(r, space) for r in load_ledger(path)]
    return RediscoveryReport(rows=rows, in_top_10_percent=sum(r.in_top_10_percent for r in rows),
                             in_top_10_percent_same_recompute=sum(r.in_top_10_percent_same_recompute for r in rows),
                             best_at_least_as_fast=sum(r.best_at_least_as_fast for r in rows))
