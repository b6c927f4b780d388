"""Memory tiers, offloading on the event timeline, training methods and the offload ledger."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sextant.catalog import build_cluster, get_profile
from sextant.cli.app import main
from sextant.cost.tiers import tier_rates
from sextant.errors import SpecError
from sextant.plan.search import evaluate_table
from sextant.plan.space import SearchSpace, enumerate_space
from sextant.resolve.train import resolve_train
from sextant.spec.scenario import TrainScenario
from sextant.train.offload_timeline import RESOURCES, OffloadInputs, offload_timeline
from sextant.train.predict import build_context, predict_train
from sextant.train.step import evaluate
from sextant.validate.offload_ledger import validate_offload

ZERO_OFFLOAD = {"model": "gpt-zero-offload-10b", "framework": "deepspeed-offload-2021",
                "hardware": {"gpu": "v100-32gb", "gpus": 1, "node": "dgx-2"},
                "strategy": {"zero": 2, "micro_batch": 10, "recompute": "full", "precision": "fp16",
                             "offload_optimizer": "cpu"},
                "workload": {"global_batch": 10, "seq_len": 1024, "optimizer": "adam"}}


def scenario(**changes) -> TrainScenario:
    data = json.loads(json.dumps(ZERO_OFFLOAD))
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return TrainScenario.model_validate(data)


def test_tiers_are_shared_by_the_gpus_of_a_node():
    one = tier_rates(build_cluster("v100-32gb", 1), get_profile("v100-32gb"))
    full = tier_rates(build_cluster("v100-32gb", 16), get_profile("v100-32gb"))
    # Two GPUs share a PCIe uplink on the DGX-2; the NVMe volume and CPU are split 16 ways.
    assert full.host_to_gpu == pytest.approx(one.host_to_gpu / 2)
    assert full.nvme_read == pytest.approx(one.nvme_read / 16)
    assert full.cpu_adam_params_per_s == pytest.approx(one.cpu_adam_params_per_s / 16)
    gh = tier_rates(build_cluster("gh200", 1), get_profile("gh200"))
    assert gh.host_link == "NVLink-C2C" and gh.host_to_gpu > 10 * one.host_to_gpu


def test_offloading_the_optimizer_moves_its_bytes_to_host_memory():
    base = predict_train(scenario(strategy={"offload_optimizer": "none"}))
    off = predict_train(scenario())
    assert off.memory_gb_per_gpu["optimizer"] == 0 and base.memory_gb_per_gpu["optimizer"] > 100
    assert off.memory_gb_per_tier["host"] >= base.memory_gb_per_gpu["optimizer"]
    assert off.fits and not base.fits
    params = predict_train(scenario(strategy={"zero": 3, "offload_params": "cpu"}))
    assert params.memory_gb_per_gpu["weights"] == 0
    nvme = predict_train(scenario(strategy={"offload_optimizer": "nvme"}))
    assert nvme.memory_gb_per_tier["nvme"] > 100 and nvme.memory_gb_per_tier["host"] < off.memory_gb_per_tier["host"]


def test_transfers_overlap_compute_on_the_timeline():
    """The step is at least the busiest resource and less than all resources back to back."""
    r = predict_train(scenario(strategy={"zero": 3, "offload_params": "cpu", "offload_activations": "cpu",
                                         "recompute": "none", "micro_batch": 2}, workload={"global_batch": 4}))
    busy = r.resource_busy_s
    assert set(busy) == set(RESOURCES)
    assert r.step_time_s >= max(busy.values()) - 1e-9
    assert r.step_time_s < sum(busy.values())
    assert r.binding_resource in ("GPU compute", "host-to-GPU link", "GPU-to-host link", "NVMe", "CPU")


def test_a_slower_host_link_never_speeds_the_step_up():
    fast = predict_train(scenario(strategy={"zero": 3, "offload_params": "cpu", "offload_activations": "nvme"}))
    slow_node = {"hardware": {"gpu": "v100-32gb", "gpus": 1, "node": "dgx-2", "gpus_per_node": 1}}
    ctx, cand = build_context(scenario(strategy={"zero": 3, "offload_params": "cpu", "offload_activations": "nvme"},
                                       **slow_node))
    slower = ctx.profile.model_copy(update={"pcie_bw_efficiency": 0.2})
    ev = evaluate(dataclasses.replace(ctx, profile=slower), cand)
    assert ev.step_time_s[0] >= fast.step_time_s - 1e-9


def test_timeline_with_nothing_to_move_is_the_gpu_work():
    n, L = 3, 4
    z = np.zeros(n)
    x = OffloadInputs(layers=L, fwd=np.full(n, 1.0), bwd=np.full(n, 2.0), pre=z + 0.5, mid=z + 0.25,
                      weight_bytes=z, act_bytes=z, grad_bytes=z, opt_params=z, opt_state_bytes=12.0,
                      gpu_opt=np.full(n, 0.1), optimizer=np.zeros(n, int), params=np.zeros(n, int),
                      activations=np.zeros(n, int))
    rates = tier_rates(build_cluster("v100-32gb", 1), get_profile("v100-32gb"))
    t = offload_timeline(x, rates)
    np.testing.assert_allclose(t.microbatch_s, 0.5 + 0.25 + L * 3.0)
    np.testing.assert_allclose(t.optimizer_s, L * 0.1)


@pytest.mark.parametrize("cpu_adam", [None, 0.3e9])
def test_interleaved_optimizer_is_never_slower_than_cpu_only(cpu_adam):
    """Deep Optimizer States: with a fast CPU (DGX-2's nominal rate) the CPU path's parameter
    copies alone nearly fill PCIe, so the GPU takes no layers; with a slow CPU it takes some."""
    def optimizer_phase(mode):
        ctx, cand = build_context(scenario(strategy={"offload_optimizer": mode}))
        if cpu_adam:
            ctx = dataclasses.replace(ctx, **{"profile": ctx.profile.model_copy(
                update={"host_adam_params_per_s": cpu_adam})})
        ev = evaluate(ctx, cand)
        return ev.time_parts_s["optimizer"][0], ev.offload.busy_optimizer_s["cpu"][0]

    (cpu_time, cpu_busy), (dos_time, dos_busy) = optimizer_phase("cpu"), optimizer_phase("interleaved")
    assert dos_time <= cpu_time + 1e-9
    if cpu_adam:
        assert dos_busy < cpu_busy and dos_time < 0.9 * cpu_time


@pytest.mark.parametrize("overlap", [{}, {"delayed_parameter_update": True}])
def test_plan_and_predict_agree_on_offloaded_rows(overlap):
    sc = TrainScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "rtx-4090", "gpus": 1},
                                       "strategy": {"overlap": overlap},
                                       "workload": {"global_batch": 8, "seq_len": 2048}})
    ctx = resolve_train(sc)[1]
    space = enumerate_space(ctx.model, 1, 1, ctx.workload, SearchSpace(), has_nvme=True)
    c = space.candidates
    assert c.offloads.sum() > 20
    batch = evaluate_table(ctx, c, None)
    rng = np.random.default_rng(0)
    for i in rng.choice(np.flatnonzero(c.offloads), 8, replace=False):
        one = evaluate(ctx, c.take(np.array([i])))
        assert one.step_time_s[0] == pytest.approx(batch.step_time_s[i], rel=1e-9)
        assert one.memory_bytes[0] == pytest.approx(batch.memory_bytes[i], rel=1e-9)


def test_methods_order_memory_as_published():
    base = {"model": "llama-2-7b", "hardware": {"gpu": "a100-80gb", "gpus": 1},
            "strategy": {"zero": 0, "recompute": "full"}, "workload": {"global_batch": 4, "seq_len": 1024}}

    def mem(method):
        sc = TrainScenario.model_validate({**base, "workload": {**base["workload"], "method": method}})
        return predict_train(sc)

    full, lora, qlora, galore, zo = (mem(m) for m in ("full", "lora", "qlora", "galore", "zo"))
    assert qlora.memory_gb_per_gpu["weights"] < lora.memory_gb_per_gpu["weights"] < full.memory_gb_per_gpu["weights"] + 1
    assert lora.memory_gb_per_gpu["optimizer"] < 0.1 * full.memory_gb_per_gpu["optimizer"]
    assert galore.memory_gb_per_gpu["optimizer"] < 0.5 * full.memory_gb_per_gpu["optimizer"]
    assert zo.memory_gb_per_gpu["optimizer"] == 0 and zo.memory_gb_per_gpu["gradients"] == 0
    assert zo.time_breakdown_s["recompute"] == 0 and zo.time_breakdown_s["optimizer"] == 0
    assert lora.step_time_s < full.step_time_s  # no weight gradients for the frozen base


def test_offload_ledger_within_target():
    report = validate_offload()
    assert {r.id for r in report.rows} >= {"O1", "Q1", "Z1", "I1", "I2"}
    assert report.max_ape <= 0.20
    assert all(r.fits for r in report.rows)


def test_trace_shows_transfers_during_compute(tmp_path):
    path = tmp_path / "offload.json"
    args = ["predict", "train", "--model", "gpt-zero-offload-10b", "--gpu", "v100-32gb", "--gpus", "1",
            "--global-batch", "4", "--micro-batch", "2", "--seq-len", "1024", "--precision", "fp16",
            "--zero", "3", "--offload-optimizer", "cpu", "--offload-params", "cpu", "--trace-out", str(path)]
    assert main(args) == 0
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["tid"] == 1]
    copies = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["tid"] == 2]
    assert gpu and copies
    assert any(a < d and c < b for a, b in gpu for c, d in copies[:20])  # a copy runs while the GPU computes


@pytest.mark.parametrize("extra, fragment", [
    (["--pp", "2", "--offload-optimizer", "cpu"], "pp=1"),
    (["--offload-params", "cpu", "--zero", "1", "--offload-optimizer", "cpu"], "ZeRO-3"),
    (["--offload-optimizer", "gpu"], "--offload-optimizer"),
])
def test_bad_offload_requests_are_one_line(capsys, extra, fragment):
    args = ["predict", "train", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--gpus", "2", "--zero", "1", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_nvme_needs_drives():
    sc = TrainScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "gh200", "gpus": 1},
                                       "strategy": {"zero": 1, "offload_optimizer": "nvme"}})
    with pytest.raises(SpecError, match="no NVMe"):
        predict_train(sc)


def test_optimizer_overlapping_the_backward_hides_its_time():
    """Fuyou: each layer's update starts when its last gradient is on the host. The step gets
    shorter but never shorter than the micro-batches alone, and the trace shows a CPU update
    running while the GPU is still in the backward."""
    fuyou = {"overlap": {"optimizer_with_backward": True}}
    for mode in ("cpu", "nvme"):
        after = predict_train(scenario(strategy={"offload_optimizer": mode, "zero": 3, "offload_params": "cpu"}))
        during = predict_train(scenario(strategy={"offload_optimizer": mode, "zero": 3, "offload_params": "cpu",
                                                  **fuyou}))
        assert during.step_time_s < after.step_time_s
        work = after.step_time_s - after.time_breakdown_s["optimizer"]
        assert during.step_time_s >= work - 1e-9
        assert during.time_breakdown_s["optimizer"] < 0.5 * after.time_breakdown_s["optimizer"]
        assert during.resource_busy_s["cpu"] == pytest.approx(after.resource_busy_s["cpu"])


def test_trace_of_the_overlapped_optimizer(tmp_path):
    path = tmp_path / "fuyou.json"
    args = ["predict", "train", "--model", "gpt-zero-offload-10b", "--gpu", "v100-32gb", "--gpus", "1",
            "--global-batch", "4", "--micro-batch", "2", "--seq-len", "1024", "--precision", "fp16", "--zero", "3",
            "--offload-optimizer", "cpu", "--offload-params", "cpu", "--framework", "fuyou-2024",
            "--trace-out", str(path)]
    assert main(args) == 0
    trace = json.loads(path.read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    backward = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("backward")]
    adam = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("CPU Adam")]
    assert len(adam) == 50 and "overlapping" in trace["otherData"]["shown"]
    assert any(a < d and c < b for a, b in backward for c, d in adam)  # an update runs during a backward
    # The first micro-batch is drawn once, the last (with the updates) after it.
    assert sum(e["name"] == "backward L0" for e in events) == 2


def test_cxl_expanders_join_host_memory():
    """Weighted interleaving over DRAM and CXL: capacity and bandwidth add up, so a 70B model's
    offloaded state that DRAM alone cannot hold fits."""
    cluster = build_cluster("h100-pcie", 1, node="pcie-h100-cxl")
    profile = get_profile("h100-pcie")
    dram_only = cluster.model_copy(update={"node": cluster.node.model_copy(update={"cxl": None})})
    pooled, dram = tier_rates(cluster, profile), tier_rates(dram_only, profile)
    node = cluster.node
    assert pooled.host_capacity / dram.host_capacity == pytest.approx(
        (node.host_memory.capacity_bytes + node.cxl.capacity_bytes) / node.host_memory.capacity_bytes)
    assert pooled.host_read > dram.host_read and pooled.cpu_adam_params_per_s > dram.cpu_adam_params_per_s
    r = predict_train(TrainScenario.model_validate({
        "model": "llama-3.1-70b", "hardware": {"gpu": "h100-pcie", "gpus": 1, "node": "pcie-h100-cxl"},
        "strategy": {"zero": 3, "micro_batch": 1, "recompute": "full", "offload_optimizer": "cpu",
                     "offload_params": "cpu"},
        "workload": {"global_batch": 8, "seq_len": 2048}}))
    assert r.fits and dram.host_capacity < r.memory_gb_per_tier["host"] * 2**30 <= pooled.host_capacity
