"""Pictures (issue 27): each --plot writes a non-blank picture that shows the numbers of the
result it came from; the pipeline schedule is the 1F1B order with its bubble."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib import image  # noqa: E402

from sextant.cli.app import main  # noqa: E402
from sextant.plots import plot_plan_train, plot_serve, plot_train  # noqa: E402
from sextant.train.pipeline_schedule import one_f_one_b  # noqa: E402


def _drawn(path) -> bool:
    pixels = image.imread(str(path))
    return pixels.std() > 0.01


def test_the_1f1b_schedule_keeps_its_order_and_has_the_textbook_bubble():
    p, m, f, b = 4, 8, 1.0, 2.0
    slots = one_f_one_b(p, m, f, b)
    assert len(slots) == 2 * p * m
    done = {(s.stage, s.kind, s.microbatch): s for s in slots}
    for s in slots:
        if s.kind == "F" and s.stage > 0:
            assert s.start >= done[(s.stage - 1, "F", s.microbatch)].end
        if s.kind == "B" and s.stage < p - 1:
            assert s.start >= done[(s.stage + 1, "B", s.microbatch)].end
    # Narayanan et al. 2021: the pipeline flush costs (p - 1) (f + b) beyond m (f + b).
    assert max(s.end for s in slots) == pytest.approx(m * (f + b) + (p - 1) * (f + b))
    for stage in range(p):  # at most p - stage micro-batches in flight (1F1B's memory bound)
        starts = sorted((s.start, 1 if s.kind == "F" else -1) for s in slots if s.stage == stage)
        in_flight = peak = 0
        for _, step in starts:
            in_flight += step
            peak = max(peak, in_flight)
        assert peak <= p - stage


def test_predict_train_draws_its_breakdowns_and_schedule(tmp_path):
    from sextant.api import predict_train

    result = predict_train(model="llama-3.1-70b", gpus=32, tp=8, pp=4, global_batch=32)
    data = plot_train(result, tmp_path / "train.png")
    assert _drawn(tmp_path / "train.png")
    assert data["time_ms"] == pytest.approx({k: v * 1e3 for k, v in result.time_breakdown_s.items() if v > 0})
    assert sum(data["memory_gib"].values()) == pytest.approx(result.memory_gb_per_gpu["total"], rel=1e-6)
    stages = {s.stage for s in data["schedule"]}
    assert stages == set(range(4)) and len(data["schedule"]) == 2 * 4 * int(result.num_microbatches)


def test_plan_train_draws_each_gpu_count_and_the_front(tmp_path, capsys):
    assert main(["plan", "train", "--model", "llama-3.2-1b", "--gpus", "8,16", "--global-batch", "64",
                 "--plot", str(tmp_path / "plan.svg")]) == 0
    assert (tmp_path / "plan.svg").read_text().lstrip().startswith("<?xml")
    from sextant.api import plan_train

    plan = plan_train(model="llama-3.2-1b", gpu_counts=[8, 16], global_batch=64)
    data = plot_plan_train(plan, tmp_path / "plan.png")
    assert _drawn(tmp_path / "plan.png")
    assert data["gpus"] == [r.gpus for r in plan.by_gpu_count]
    assert data["tokens_per_s"] == [r.best_tokens_per_s for r in plan.by_gpu_count]
    assert data["pareto"] == [r.on_pareto_front for r in plan.by_gpu_count]


def test_predict_serve_draws_the_latency_distributions_of_its_percentiles(tmp_path, capsys):
    from sextant.api import serve_scenario
    from sextant.serve.predict import request_latencies, run, summarise

    sc = serve_scenario(model="llama-3.2-1b", gpu="h100-sxm", rate=20.0, num_requests=200)
    res, reqs, out = run(sc)
    result = summarise(res, reqs, out)
    data = plot_serve(result, *request_latencies(sc, reqs, out), tmp_path / "serve.png")
    assert _drawn(tmp_path / "serve.png")
    assert len(data["TTFT"]) == 200
    assert float(data["TTFT"].mean()) == pytest.approx(result.ttft_ms.mean, rel=1e-9)
    assert float(data["end to end"].mean()) == pytest.approx(result.e2e_ms.mean, rel=1e-9)
    assert main(["predict", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--num-requests", "16",
                 "--plot", str(tmp_path / "cli.pdf")]) == 0
    assert (tmp_path / "cli.pdf").read_bytes().startswith(b"%PDF")


def test_plan_serve_draws_each_placement(tmp_path, capsys):
    assert main(["plan", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--num-requests", "32",
                 "--plot", str(tmp_path / "placements.png")]) == 0
    assert _drawn(tmp_path / "placements.png")


@pytest.mark.parametrize("target,words", [("out.txt", "is written as"), ("nofolder/out.png", "does not exist")])
def test_a_bad_picture_target_is_refused_before_the_work(tmp_path, capsys, target, words):
    assert main(["predict", "train", "--plot", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_trace_out_writes_the_pipeline_schedule_of_a_job_that_offloads_nothing(tmp_path, capsys):
    import json

    path = tmp_path / "pipeline.json"
    assert main(["predict", "train", "--model", "llama-3.1-70b", "--gpus", "32", "--tp", "8", "--pp", "4",
                 "--global-batch", "32", "--trace-out", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    events = json.loads(path.read_text())["traceEvents"]
    work = [e for e in events if e.get("ph") == "X" and e["cat"] in ("forward", "backward")]
    assert len(work) == 2 * 4 * int(result["num_microbatches"])
    assert {e["tid"] for e in work} == {0, 1, 2, 3}
