"""``validate plan``: the published configuration's rank, baselines counted apart, and the order
of configurations measured on the same model, GPUs and batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sextant.validate.ledger import load_ledger
from sextant.validate.rediscover import rediscover

BUILTIN = Path(__file__).resolve().parents[1] / "src" / "sextant" / "validate" / "data" / "training.yaml"


def _rows(*ids: str) -> list[dict]:
    rows = {r["id"]: r for r in yaml.safe_load(BUILTIN.read_text())}
    return [rows[i] for i in ids]


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "ledger.yaml"
    path.write_text(yaml.safe_dump(rows))
    return path


def test_a_measured_pair_is_checked_in_both_directions(tmp_path: Path) -> None:
    """K2 (selective recomputation, 1.10 s) beat K1 (full, 1.42 s) on the same 22B model, 8 GPUs
    and batch: the planner's cost model must order them so; with the measurements swapped the
    same prediction disagrees."""
    k1, k2 = _rows("K1", "K2")
    report = rediscover(_write(tmp_path, [k1, k2]))
    assert [(p.faster, p.slower) for p in report.pairs] == [("K2", "K1")]
    pair = report.pairs[0]
    assert pair.measured_speedup == pytest.approx(1.42 / 1.10)
    assert pair.agrees and pair.predicted_speedup > 1.0 and report.pairs_agreeing == 1

    swapped = [{**k1, "published": 1.10}, {**k2, "published": 1.42}]
    pair = rediscover(_write(tmp_path, swapped)).pairs[0]
    assert (pair.faster, pair.slower) == ("K1", "K2") and not pair.agrees
    assert pair.predicted_speedup == pytest.approx(1.0 / report.pairs[0].predicted_speedup)


def test_rates_convert_to_step_times_and_unlike_runs_do_not_pair(tmp_path: Path) -> None:
    """A throughput metric gives a measured step time (predicted step x predicted / published
    rate); rows on other GPU counts, and one configuration measured twice, make no pair."""
    z1, z7, z12, k10 = _rows("Z1", "Z7", "Z12", "K10")
    report = rediscover(_write(tmp_path, [z1, z7, z12, k10]))
    by_id = {r.id: r for r in report.rows}
    # Z1 and Z7 report Megatron TFLOP/s per GPU on the same workload: step times scale inversely.
    assert by_id["Z1"].measured_step_time_s / by_id["Z7"].measured_step_time_s == pytest.approx(153.0 / 144.0)
    # Z12 and K10 ran the same layout on 2240 GPUs (two papers, two software versions): no pair.
    assert by_id["Z12"].published_config == by_id["K10"].published_config
    assert [(p.faster, p.slower) for p in report.pairs] == [("Z7", "Z1")]


def test_baselines_are_counted_apart_from_the_authors_choices(tmp_path: Path) -> None:
    k1, k2 = _rows("K1", "K2")
    report = rediscover(_write(tmp_path, [k1, k2]))
    assert [r.role for r in report.rows] == ["baseline", "chosen"]
    assert report.chosen_rows == 1
    assert report.chosen_in_top_10_percent == int(report.rows[1].in_top_10_percent)


def test_builtin_baselines_are_the_weaker_side_of_a_published_comparison() -> None:
    """Every row marked baseline comes from a source that also published what beat it."""
    ledger = load_ledger()
    baselines = [r for r in ledger if r.role == "baseline"]
    assert {r.id for r in baselines} >= {"Z1", "K1"}
    for row in baselines:
        assert any(other.role == "chosen" and other.source.split(",")[0] == row.source.split(",")[0]
                   for other in ledger), row.id
