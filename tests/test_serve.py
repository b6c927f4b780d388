"""The serving simulator: one cost model with the inference functions, request conservation,
KV capacity, monotone latency under load, determinism, traces and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from serve_strategies import scenario_over, tight_schedulers

from sextant.cli.app import main
from sextant.cost.inference import decode_time, prefill_time
from sextant.errors import SpecError
from sextant.serve.deploy import deploy_scenario
from sextant.serve.predict import engine_config, predict_serve, run
from sextant.serve.request_table import DONE
from sextant.serve.requests import Requests, load_trace
from sextant.spec.serving import ServeScenario

REQUIRED_KEYS = {"output_tokens_per_s", "output_tokens_per_s_per_gpu", "requests_per_s", "ttft_ms", "tpot_ms",
                 "e2e_ms", "slo_attainment", "goodput_requests_per_s", "kv_cache_peak_fraction"}


def scenario(**kw) -> ServeScenario:
    return scenario_over({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
                          "workload": {"input_len": 256, "output_len": 64, "num_requests": 64}}, **kw)


@pytest.mark.parametrize("model,tp,precision", [("llama-3.1-8b", 1, "bf16"), ("llama-2-70b", 4, "fp8"),
                                                 ("mixtral-8x7b", 2, "w4a16"), ("gpt-j-6b", 1, "fp16")])
def test_simulator_iterations_are_the_inference_cost_functions(model, tp, precision):
    sc = scenario(model=model, hardware={"gpus": tp}, deployment={"tp": tp, "precision": precision})
    res = deploy_scenario(sc, 512, 256)
    cfg, cost = engine_config(res, "both")
    lay = res.instance.layout
    for batch, ctx in ((1, 100), (37, 1000), (256, 4000)):
        ref = sum(float(v) for v in decode_time(res.model, lay, batch, ctx).values())
        g, ew, comm = cost.token_parts(batch)
        device = g + ew + comm + cost.head(batch) + cost.decode_per_ctx * batch * ctx + cost.write_s * batch + cost.launch_s
        assert device + cost.host(device) == pytest.approx(ref, rel=1e-9)
    for batch, prompt in ((1, 128), (8, 2048)):
        ref = sum(float(v) for v in prefill_time(res.model, lay, batch, prompt).values())
        g, ew, comm = cost.token_parts(batch * prompt)
        device = g + ew + comm + cost.head(batch) + batch * cost.prefill_attention(prompt, 0.0) + cost.launch_s
        assert device + cost.host(device) == pytest.approx(ref, rel=1e-9)


def test_static_batch_throughput_is_one_prefill_plus_decode_steps():
    sc = scenario(framework="trtllm-session-2023", scheduler={"max_batch": 8},
                  workload={"input_len": 128, "output_len": 16, "num_requests": 8})
    res, reqs, out = run(sc)
    lay = res.instance.layout
    expected = sum(float(v) for v in prefill_time(res.model, lay, 8, 128).values())
    expected += sum(sum(float(v) for v in decode_time(res.model, lay, 8, 128 + j).values()) for j in range(1, 16))
    assert max(out.table.finish) == pytest.approx(expected, rel=1e-9)


def _check_conservation(sc: ServeScenario):
    res, reqs, out = run(sc)
    t = out.table
    n = len(reqs)
    assert all(s == DONE for s in t.state)
    finish, first, arrival = np.asarray(t.finish), np.asarray(t.first), reqs.arrival_s
    assert (first >= arrival - 1e-12).all() and (finish >= first - 1e-12).all()
    assert sum(e.outstanding for e in out.engines + out.prefill_engines) == 0
    assert t.gen == list(reqs.output_tokens)
    for e in out.engines + out.prefill_engines:
        assert e.peak_used <= e.cfg.capacity_blocks
        assert e.free == e.cfg.capacity_blocks  # every block returned
        assert e.n_dec == 0
    assert n == len(finish)
    return res, out


@settings(max_examples=25, deadline=None)
@given(tree=tight_schedulers())
def test_every_request_completes_exactly_once_and_kv_stays_within_capacity(tree):
    # Low memory utilization leaves a small KV cache, so preemption and queueing happen.
    _check_conservation(ServeScenario.model_validate(tree))


def test_a_tight_cache_preempts_and_still_completes_everything():
    for mode in ("recompute", "swap"):
        sc = scenario(scheduler={"gpu_memory_utilization": 0.215, "max_batch": 256, "preemption": mode},
                      workload={"input_len": 200, "output_len": 1500, "num_requests": 200})
        res, out = _check_conservation(sc)
        assert out.table.preemptions > 0
        assert max(e.kv_peak_fraction() for e in out.engines) > 0.9


def test_a_preempted_request_is_prefilled_again_within_the_token_budget():
    """Without chunked prefill a preempted request re-prefills its prompt and what it generated in
    one iteration: the default budget covers the longest request (as vLLM's covers
    max_model_len), so 9,000-token requests preempted late still finish; a smaller budget given
    explicitly is refused, as vLLM refuses max_num_batched_tokens below max_model_len."""
    tree = {"scheduler": {"gpu_memory_utilization": 0.3, "max_batch": 64, "preemption": "recompute"},
            "workload": {"input_len": 4000, "output_len": 5000, "num_requests": 24}}
    res, out = _check_conservation(scenario(**tree))
    assert out.table.preemptions > 0 and res.token_budget == 9000
    with pytest.raises(SpecError, match="prefilled again"):
        predict_serve(scenario(**{**tree, "scheduler": {**tree["scheduler"], "token_budget": 8192}}))
    # Reserved blocks never preempt, and chunked prefill splits the re-prefill: both accept it.
    for scheduler in ({"kv_allocation": "reserve"}, {"batching": "chunked"}):
        predict_serve(scenario(**{**tree, "scheduler": {**tree["scheduler"], "token_budget": 8192, **scheduler}}))


def test_disaggregated_and_speculative_deployments_complete():
    _check_conservation(scenario(hardware={"gpus": 3}, disaggregation={"prefill_replicas": 1, "decode_replicas": 2},
                                 workload={"rate": 30.0, "num_requests": 100}))
    fast = predict_serve(scenario(speculative={"draft_model": "gpt3-350m", "num_tokens": 4, "acceptance_rate": 0.8},
                                  workload={"num_requests": 4}))
    plain = predict_serve(scenario(workload={"num_requests": 4}))
    assert fast.tpot_ms.mean < plain.tpot_ms.mean  # small batches: speculation pays at 80% acceptance


@pytest.mark.parametrize("batching", ["continuous", "chunked"])
def test_more_load_never_lowers_latency_percentiles(batching):
    previous = None
    for rate in (2.0, 8.0, 20.0, 40.0, 80.0):
        r = predict_serve(scenario(scheduler={"batching": batching},
                                   workload={"rate": rate, "num_requests": 400, "seed": 3,
                                             "input_len": {"distribution": "lognormal", "mean": 400, "stdev": 300},
                                             "output_len": {"distribution": "lognormal", "mean": 150, "stdev": 100}}))
        now = (r.ttft_ms.p50, r.ttft_ms.p90, r.e2e_ms.p50, r.e2e_ms.p90, r.tpot_ms.p50)
        if previous is not None:
            assert all(b >= a * (1 - 1e-9) for a, b in zip(previous, now)), (rate, previous, now)
        previous = now


def test_deterministic_for_a_seed():
    sc = scenario(workload={"rate": 50.0, "arrival": "gamma", "burstiness": 0.5, "num_requests": 300, "seed": 7,
                            "input_len": {"distribution": "lognormal", "mean": 300, "stdev": 200}})
    assert predict_serve(sc).model_dump() == predict_serve(sc).model_dump()
    other = sc.model_copy(update={"workload": sc.workload.model_copy(update={"seed": 8})})
    assert predict_serve(other).e2e_ms != predict_serve(sc).e2e_ms


def test_json_has_the_documented_keys(capsys):
    assert main(["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--num-requests", "50",
                 "--rate", "10", "--ttft-slo", "100", "--tpot-slo", "30", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert REQUIRED_KEYS <= data.keys()
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(data[key]) == {"mean", "p50", "p90", "p99"}
    assert 0 <= data["slo_attainment"] <= 1 and 0 <= data["kv_cache_peak_fraction"] <= 1
    assert data["output_tokens_per_s"] == pytest.approx(data["output_tokens_per_s_per_gpu"])


def test_trace_file_and_perfetto_output(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,100,20\n0.01,300,5\n0.5,50,1\n")
    out = tmp_path / "timeline.json"
    assert main(["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--trace", str(trace),
                 "--trace-out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests_per_s"] > 0
    events = json.loads(out.read_text())["traceEvents"]
    assert any(e["ph"] == "X" and e["name"] in ("prefill", "mixed") for e in events)
    assert sum(e["ph"] == "b" for e in events) == sum(e["ph"] == "e" for e in events) > 0
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"timestamp": 0, "prompt_tokens": 10, "completion_tokens": 3}\n')
    r = load_trace(str(jsonl))
    assert isinstance(r, Requests) and r.input_tokens.tolist() == [10]


@pytest.mark.parametrize("body,message", [
    ("arrival_s,input_tokens,output_tokens\n-1,10,10\n", "negative"),
    ("arrival_s,input_tokens\n0,10\n", "missing column 'output_tokens'"),
    ("arrival_s,input_tokens,output_tokens\n1,10,10\n0.5,10,10\n", "not sorted"),
    ("arrival_s,input_tokens,output_tokens\n0,10,0\n", "output_tokens must be a whole number >= 1"),
    ("arrival_s,input_tokens,output_tokens\n0,ten,1\n", "must be numbers"),
])
def test_bad_traces_are_one_line_errors(tmp_path, capsys, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(SpecError, match=message):
        load_trace(str(path))
    assert main(["predict", "serve", "--trace", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("args,message", [
    (["--model", "llama-3.1-405b", "--gpu", "h100-sxm"], "weights need"),
    (["--model", "llama-3.1-70b", "--tp", "3"], "does not divide"),
    (["--model", "llama-3.1-8b", "--gpus", "1", "--tp", "2"], "need 2 GPUs"),
    (["--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "a100-80gb"], "no fp8"),
    (["--input-len", "9000", "--token-budget", "8192", "--batching", "continuous"], "token budget"),
])
def test_impossible_deployments_exit_2(capsys, args, message):
    assert main(["predict", "serve", *args, "--num-requests", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_quantization_and_kv_precision_move_the_numbers_the_right_way():
    base = predict_serve(scenario(workload={"input_len": 512, "output_len": 256, "num_requests": 256}))
    fp8 = predict_serve(scenario(deployment={"precision": "fp8"}, workload={"input_len": 512, "output_len": 256,
                                                                            "num_requests": 256}))
    int4 = predict_serve(scenario(deployment={"precision": "w4a16", "kv_precision": "int4"},
                                  workload={"input_len": 512, "output_len": 256, "num_requests": 256}))
    assert fp8.memory_gb_per_gpu["weights"] < base.memory_gb_per_gpu["weights"]
    assert int4.memory_gb_per_gpu["weights"] < fp8.memory_gb_per_gpu["weights"]
    assert int4.kv_cache_capacity_tokens > 3 * base.kv_cache_capacity_tokens
    assert fp8.output_tokens_per_s > base.output_tokens_per_s


def test_serving_ledger_meets_the_accuracy_targets():
    from sextant.validate.serve import validate_serving

    report = validate_serving()
    assert report.throughput_rows >= 40 and report.latency_rows >= 20
    assert report.rows_not_fitting == 0
    assert report.throughput_median_ape <= 0.10
    assert report.latency_median_ape <= 0.12


def test_expert_parallelism_moves_experts_not_bytes():
    a = deploy_scenario(scenario(model="deepseek-v3", hardware={"gpu": "h200", "gpus": 8},
                         deployment={"tp": 8, "ep": 1, "precision": "fp8"}), 512, 256)
    b = deploy_scenario(scenario(model="deepseek-v3", hardware={"gpu": "h200", "gpus": 8},
                         deployment={"tp": 8, "ep": 8, "precision": "fp8"}), 512, 256)
    assert a.instance.weights_bytes_per_gpu == pytest.approx(b.instance.weights_bytes_per_gpu)
    assert 80e9 < a.instance.weights_bytes_per_gpu < 90e9  # 671B parameters at 1 byte over 8 GPUs


FOLDED = [
    # replicas under continuous batching (round-robin), pipeline engines with the least-loaded
    # router, and offloaded replicas sharing one host
    {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 8}, "deployment": {"tp": 2},
     "scheduler": {"max_batch": 64}, "workload": {"input_len": 512, "output_len": 128, "num_requests": 256}},
    {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 8}, "deployment": {"tp": 1, "pp": 2},
     "scheduler": {"max_batch": 32, "router": "least_loaded"},
     "workload": {"input_len": 300, "output_len": 64, "num_requests": 128}},
    {"model": "opt-30b", "framework": "flexgen-2023", "deployment": {"precision": "fp16", "replicas": 2},
     "hardware": {"gpu": "rtx-4090", "gpus": 2, "node": "workstation-rtx4090"}, "scheduler": {"max_batch": 32},
     "offload": {"weights": "cpu", "kv_cache": "cpu", "kv_attention": "cpu"},
     "workload": {"input_len": 512, "output_len": 32, "num_requests": 64}},
]


@pytest.mark.parametrize("tree", FOLDED)
def test_identical_engines_simulated_once_give_the_full_simulation(tree, monkeypatch):
    """Alike requests at time 0 over identical engines: one engine's replay, repeated, is what
    the full event loop computes (to the last bits of a mean's summation order)."""
    import functools

    import sextant.serve.predict as predict
    from sextant.serve.simulator import simulate

    sc = ServeScenario.model_validate(tree)
    folded = predict_serve(sc).model_dump()
    folded_table = run(sc)[2].table
    monkeypatch.setattr(predict, "simulate", functools.partial(simulate, fold_alike=False))
    full = predict_serve(sc).model_dump()
    full_table = run(sc)[2].table
    # Request by request, not only in aggregate: request i ran on engine i % engines.
    assert folded_table.first == pytest.approx(full_table.first, rel=1e-12)
    assert folded_table.finish == pytest.approx(full_table.finish, rel=1e-12)
    assert folded_table.state == full_table.state and folded_table.gen == full_table.gen
    assert folded.keys() == full.keys()
    for key, value in full.items():
        if isinstance(value, float):
            assert folded[key] == pytest.approx(value, rel=1e-12), key
        elif key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            assert folded[key] == pytest.approx(value, rel=1e-12), key
        elif key in ("time_breakdown_s", "resource_busy_s"):
            assert folded[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert folded[key] == value, key


def test_only_alike_requests_are_folded(monkeypatch):
    """Requests of different lengths are dealt out unevenly: the loop runs every engine. (The
    folded path calls ``simulate`` again for one engine; that inner call is what is counted.)"""
    import sextant.serve.simulator as simulator

    calls = []
    real = simulator.simulate
    monkeypatch.setattr(simulator, "simulate", lambda *a, **k: calls.append(k["engines"]) or real(*a, **k))
    predict_serve(ServeScenario.model_validate(FOLDED[0]))
    assert calls == [1]
    calls.clear()
    tree = {**FOLDED[0], "workload": {"input_len": {"mean": 512, "stdev": 100, "distribution": "uniform"},
                                      "output_len": 128, "num_requests": 64}}
    predict_serve(ServeScenario.model_validate(tree))
    assert calls == []


def test_the_result_echoes_the_workload_it_simulated(capsys):
    from sextant.spec.serving import ServeWorkload

    assert main(["predict", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--num-requests", "12",
                 "--rate", "3", "--input-len", "300", "--json"]) == 0
    echoed = json.loads(capsys.readouterr().out)["workload"]
    workload = ServeWorkload.model_validate(echoed)
    assert (workload.num_requests, workload.rate, workload.input_len, workload.output_len) == (12, 3.0, 300, 256)
