"""``sextant export``: each framework's launch is checked by that framework's own parser where it
installs on a CPU-only machine (torchtitan's ConfigManager, DeepSpeed's DeepSpeedConfig and
launcher), against Megatron-LM's recorded validate_args verdicts and option table, and against the
options vLLM's, SGLang's and TensorRT-LLM's sources declare (tests/data/framework_options)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from framework_options import OptionError, parse, table

from sextant.export import ExportError, export_serve, export_train
from sextant.spec.scenario import parse_scenario
from sextant.spec.serving import parse_serve_scenario

DATA = Path(__file__).parent / "data" / "framework_options"
VALIDATED = json.loads((DATA / "megatron-lm-validated.json").read_text())

TRAIN = {
    "llama8b-fsdp": {"model": "llama-3.1-8b", "framework": "torchtitan-2024", "hardware": {"gpus": 8},
                     "strategy": {"zero": 3, "micro_batch": 2, "recompute": "selective"},
                     "workload": {"global_batch": 64, "seq_len": 8192}},
    "llama70b-tp-pp": {"model": "llama-3.1-70b", "framework": "torchtitan-2024", "hardware": {"gpus": 64},
                       "strategy": {"tp": 8, "pp": 4, "zero": 3, "sequence_parallel": True, "recompute": "full"},
                       "workload": {"global_batch": 128, "seq_len": 8192}},
    "qwen3-moe-ep": {"model": "qwen3-30b-a3b", "framework": "torchtitan-2024", "hardware": {"gpus": 16},
                     "strategy": {"zero": 3, "ep": 8, "etp": 1}, "workload": {"global_batch": 64, "seq_len": 4096}},
    "llama405b-fp8-cp": {"model": "llama-3.1-405b", "framework": "torchtitan-2024", "hardware": {"gpus": 512},
                         "strategy": {"tp": 8, "pp": 8, "cp": 2, "zero": 3, "precision": "fp8",
                                      "sequence_parallel": True, "recompute": "full"},
                         "workload": {"global_batch": 256, "seq_len": 16384}},
    "qwen3-14b-ddp": {"model": "qwen3-14b", "hardware": {"gpus": 8}, "strategy": {"zero": 0, "tp": 4},
                      "workload": {"global_batch": 32, "seq_len": 4096}},
}


def _train(tree: dict):
    return parse_scenario(tree)


# --- Megatron-LM ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALIDATED["exports"]))
def test_megatron_export_is_what_megatron_validate_args_accepted(name):
    """scripts/check_megatron_exports.py ran Megatron-LM's parse_args + validate_args on these
    exports; the exporter must still write exactly them (else run that script again)."""
    record = VALIDATED["exports"][name]
    launch = export_train(_train(record["scenario"]), "megatron")
    assert launch.argv == record["argv"]
    assert launch.env == record["env"]


@pytest.mark.parametrize("name", sorted(VALIDATED["exports"]) + ["qwen3-14b-ddp"])
def test_megatron_export_parses_with_megatrons_options(name):
    tree = VALIDATED["exports"][name]["scenario"] if name in VALIDATED["exports"] else TRAIN[name]
    scenario = _train(tree)
    launch = export_train(scenario, "megatron")
    got = parse("megatron-lm", launch.argv[launch.argv.index("pretrain_gpt.py") + 1:])
    s, w = scenario.strategy, scenario.workload
    assert got["--tensor-model-parallel-size"] == s.tp
    assert got["--pipeline-model-parallel-size"] == s.pp
    assert got.get("--context-parallel-size", 1) == s.cp
    assert got["--global-batch-size"] == w.global_batch and got["--micro-batch-size"] == s.micro_batch
    assert got["--seq-length"] == w.seq_len
    assert got.get("--use-distributed-optimizer", False) == (s.zero == 1 or s.offload_optimizer == "cpu")
    assert got.get("--use-megatron-fsdp", False) == (s.zero >= 2)
    # Megatron-LM's validate_args: param-gather overlap needs grad-reduce overlap and a sharded optimizer
    if got.get("--overlap-param-gather"):
        assert got["--overlap-grad-reduce"] and (got.get("--use-distributed-optimizer") or got.get("--use-megatron-fsdp"))


def test_the_megatron_option_table_rejects_what_megatron_rejects():
    with pytest.raises(OptionError):
        parse("megatron-lm", ["--tensor-model-parallel-size", "two"])
    with pytest.raises(OptionError):
        parse("megatron-lm", ["--recompute-granularity", "partial"])
    with pytest.raises(OptionError):
        parse("megatron-lm", ["--tensor-parallel-size", "2"])  # torchtitan's spelling
    assert parse("megatron-lm", ["--sequence-parallel"]) == {"--sequence-parallel": True}


def test_megatron_splits_uneven_pipelines_the_ways_it_allows():
    from sextant.export.megatron import moe_layer_pattern, pipeline_split

    assert pipeline_split(126, 16, 1)[0] == ["--account-for-embedding-in-pipeline-split",
                                             "--account-for-loss-in-pipeline-split"]
    split, fullest = pipeline_split(61, 16, 1)  # DeepSeek-V3: 3 + 14 x 4 + 2
    assert split == ["--decoder-first-pipeline-num-layers", "3", "--decoder-last-pipeline-num-layers", "2"]
    assert fullest == 4
    with pytest.raises(ExportError, match="virtual stages"):
        pipeline_split(61, 8, 2)
    from sextant.catalog.models import get_model

    pattern = moe_layer_pattern(get_model("deepseek-v3"))
    assert pattern == "[0]*3+[1]*58" and eval(pattern) == [0] * 3 + [1] * 58  # noqa: S307 - Megatron evals it


# --- torchtitan -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchtitan_parser():
    pytest.importorskip("torchtitan")
    # The model registry imports Triton kernels of one MoE dispatcher at load (Triton is not a
    # dependency of the CPU build of PyTorch); parsing never runs them.
    with mock.patch.dict(sys.modules, {"torchtitan.distributed.minimal_async_ep.kernels": mock.MagicMock()}):
        from torchtitan.config import ConfigManager

        yield ConfigManager


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN))
def test_torchtitan_export_parses_with_torchtitans_config_manager(name, torchtitan_parser):
    scenario = _train(TRAIN[name])
    launch = export_train(scenario, "torchtitan")
    args = launch.argv[launch.argv.index("torchtitan.train") + 1:]
    gpu = scenario.hardware.gpu
    # Float8 converters check the GPU at config time: answer as the exported GPU would (SM90).
    with mock.patch("torchtitan.components.quantization.float8.has_cuda_capability", lambda *a: gpu == "h100-sxm"):
        config = torchtitan_parser().parse_args(args)
    p, s, w = config.parallelism, scenario.strategy, scenario.workload
    dp = scenario.hardware.gpus // (s.tp * s.pp * s.cp)
    assert (p.data_parallel_shard_degree * p.data_parallel_replicate_degree, p.tensor_parallel_degree,
            p.pipeline_parallel_degree, p.context_parallel_degree) == (dp, s.tp, s.pp, s.cp)
    assert p.data_parallel_shard_degree == (dp if s.zero == 3 else 1)
    assert config.training.global_batch_size == w.global_batch and config.training.seq_len == w.seq_len
    per_step = config.training.local_batch_size * dp  # sequences per accumulation step
    assert w.global_batch % per_step == 0
    if s.pp > 1:
        assert config.training.local_batch_size % p.pipeline_parallel_microbatch_size == 0
        assert p.pipeline_parallel_microbatch_size == s.micro_batch
    else:
        assert config.training.local_batch_size == s.micro_batch
    checkpointing = config.activation_checkpoint  # None: activation-checkpoint:none
    assert (type(checkpointing).__qualname__.split(".")[0] if checkpointing is not None else "none") == {
        "none": "none", "full": "FullAC", "selective": "SelectiveAC"}[s.recompute]
    model = config.model_spec.model
    from sextant.catalog.models import get_model

    ours = get_model(scenario.model)
    assert (model.dim, model.vocab_size, len(model.layers)) == (ours.hidden_size, ours.vocab_size, ours.num_layers)


def test_torchtitan_refuses_what_it_cannot_run():
    with pytest.raises(ExportError, match="ZeRO-1"):
        export_train(_train({**TRAIN["qwen3-14b-ddp"], "strategy": {"zero": 1}}), "torchtitan")
    with pytest.raises(ExportError, match="registers no config"):
        export_train(_train({"model": "mistral-7b", "hardware": {"gpus": 8}, "strategy": {"zero": 3}}), "torchtitan")
    with pytest.raises(ExportError, match="predict with precision fp8"):
        export_train(_train({**TRAIN["llama405b-fp8-cp"], "strategy": {**TRAIN["llama405b-fp8-cp"]["strategy"],
                                                                        "precision": "bf16"}}), "torchtitan")
    with pytest.raises(ExportError, match="blackwell"):  # MXFP8 needs SM100
        export_train(_train({**TRAIN["llama8b-fsdp"], "strategy": {"zero": 3, "precision": "fp8"}}), "torchtitan")


# --- DeepSpeed --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tree", [
    {"model": "llama-3.1-8b", "hardware": {"gpus": 16}, "strategy": {"zero": 2, "micro_batch": 2},
     "workload": {"global_batch": 128}},
    {"model": "llama-3.1-8b", "hardware": {"gpus": 8}, "strategy": {"zero": 3, "tp": 2, "offload_optimizer": "cpu",
                                                                     "offload_params": "cpu", "recompute": "full"},
     "workload": {"global_batch": 64}},
    {"model": "opt-30b", "hardware": {"gpus": 1}, "strategy": {"zero": 3, "precision": "fp16",
                                                               "offload_optimizer": "nvme", "offload_params": "nvme"},
     "workload": {"global_batch": 8, "seq_len": 2048}},
], ids=["zero2-2nodes", "zero3-offload-autotp", "zero-infinity-nvme"])
def test_deepspeed_export_is_accepted_by_deepspeed(tree):
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.launcher.runner import parse_args
    from deepspeed.runtime.config import DeepSpeedConfig

    scenario = _train(tree)
    launch = export_train(scenario, "deepspeed")
    s = scenario.strategy
    dp = scenario.hardware.gpus // s.tp

    class DataParallelGroup:  # DeepSpeedConfig reads the data-parallel size from Megatron's mpu
        def get_data_parallel_world_size(self):
            return dp

    with mock.patch.object(deepspeed.comm, "get_rank", lambda *a, **k: 0):
        config = DeepSpeedConfig(json.loads(launch.files["ds_config.json"]), mpu=DataParallelGroup())
    assert config.train_batch_size == scenario.workload.global_batch
    assert config.train_micro_batch_size_per_gpu == s.micro_batch
    assert config.zero_config.stage == s.zero
    offload = config.zero_config.offload_optimizer
    assert (getattr(offload.device, "value", offload.device) if offload else "none") == s.offload_optimizer
    runner = parse_args(launch.argv[1:])
    assert (runner.num_nodes, runner.num_gpus, runner.user_script) == (
        -(-scenario.hardware.gpus // 8), min(8, scenario.hardware.gpus), "train.py")


def test_deepspeed_refuses_pipelines():
    with pytest.raises(ExportError, match="PipelineModule"):
        export_train(_train(TRAIN["llama70b-tp-pp"]), "deepspeed")


# --- serving engines --------------------------------------------------------------------------

SERVE = {
    "llama8b-1gpu": {"model": "llama-3.1-8b", "framework": "vllm-v1-0.15", "hardware": {"gpus": 1},
                     "workload": {"input_len": 1024, "output_len": 256, "rate": 4}},
    "llama70b-fp8-tp4x2": {"model": "llama-3.1-70b", "framework": "sglang-2025", "hardware": {"gpus": 8},
                           "deployment": {"tp": 4, "precision": "fp8"},
                           "workload": {"input_len": 2048, "output_len": 512, "rate": 10}},
    "mixtral-ep-eager": {"model": "mixtral-8x7b", "framework": "trtllm-inflight-2025", "hardware": {"gpus": 4},
                         "deployment": {"tp": 4, "ep": 4}, "scheduler": {"cuda_graphs": False, "batching": "continuous"},
                         "workload": {"input_len": 512, "output_len": 128}},
    "offload-weights": {"model": "llama-2-13b", "hardware": {"gpu": "l4", "gpus": 1},
                        "offload": {"weights": "cpu", "resident_fraction": 0.25},
                        "workload": {"input_len": 512, "output_len": 64}},
    "speculative": {"model": "llama-3.1-70b", "hardware": {"gpus": 4}, "deployment": {"tp": 4},
                    "speculative": {"draft_model": "llama-3.2-1b", "num_tokens": 4},
                    "workload": {"input_len": 512, "output_len": 128}},
}
ENGINE_TABLE = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm"}


def _serve(name):
    return parse_serve_scenario(SERVE[name])


def _preset_applied(scenario):
    """The scenario as the engine runs it: its serving preset's scheduler defaults filled in."""
    from sextant.resolve.framework import apply_serving_framework

    return apply_serving_framework(scenario)


@pytest.mark.parametrize("name", sorted(SERVE))
def test_vllm_export_parses_with_vllms_options(name):
    scenario = _serve(name)
    launch = export_serve(scenario, "vllm")
    scenario = _preset_applied(scenario)
    assert launch.argv[:3] == ["vllm", "serve", launch.argv[2]]
    got = parse("vllm", launch.argv[3:])
    dep, sch = scenario.deployment, scenario.scheduler
    assert got["--tensor-parallel-size"] == dep.tp
    assert got.get("--data-parallel-size", 1) * dep.tp * dep.pp == scenario.hardware.gpus
    assert got["--max-num-seqs"] == sch.max_batch and got["--block-size"] == sch.block_size
    assert got.get("--enforce-eager", False) == (not sch.cuda_graphs)
    assert got["--enable-prefix-caching"] == sch.prefix_caching
    assert got["--enable-chunked-prefill"] == (sch.batching == "chunked")
    if scenario.speculative is not None:
        spec = json.loads(got["--speculative-config"])
        assert set(spec) <= set(table("vllm")["speculative_config_keys"])
        assert spec["num_speculative_tokens"] == scenario.speculative.num_tokens
    if scenario.offload.weights == "cpu":
        assert 0 < got["--cpu-offload-gb"] < 24  # 13B bf16 is 24 GiB; a quarter stays on the GPU


@pytest.mark.parametrize("name", sorted(SERVE))
def test_sglang_export_parses_with_sglangs_options(name):
    scenario = _serve(name)
    launch = export_serve(scenario, "sglang")
    scenario = _preset_applied(scenario)
    assert launch.argv[:3] == ["python", "-m", "sglang.launch_server"]
    got = parse("sglang", launch.argv[3:])
    dep, sch = scenario.deployment, scenario.scheduler
    assert got["--tp-size"] == dep.tp and got.get("--dp-size", 1) * dep.tp == scenario.hardware.gpus
    assert got["--max-running-requests"] == sch.max_batch
    assert got.get("--disable-radix-cache", False) == (not sch.prefix_caching)
    assert got.get("--disable-cuda-graph", False) == (not sch.cuda_graphs)


def _check_keys(config: dict, schema: dict, where: str = "") -> None:
    for key, value in config.items():
        assert key in schema, f"{where}{key} is not a TensorRT-LLM LLM API option"
        spec = schema[key]
        if spec.get("choices") and value is not None:
            assert value in spec["choices"], f"{where}{key}={value}"
        if isinstance(value, dict):
            _check_keys(value, spec.get("keys", {}), f"{where}{key}.")


@pytest.mark.parametrize("name", sorted(n for n in SERVE if n != "offload-weights"))
def test_trtllm_export_parses_with_trtllms_options(name):
    scenario = _serve(name)
    launch = export_serve(scenario, "trtllm")
    scenario = _preset_applied(scenario)
    assert launch.argv[:2] == ["trtllm-serve", launch.argv[1]]
    got = parse("trtllm", launch.argv[2:])
    assert got["--tensor_parallel_size"] == scenario.deployment.tp
    config = yaml.safe_load(launch.files[got["--config"]])
    _check_keys(config, table("trtllm")["config_keys"])
    assert config["kv_cache_config"]["enable_block_reuse"] == scenario.scheduler.prefix_caching
    assert (config["cuda_graph_config"] is None) == (not scenario.scheduler.cuda_graphs)


def test_serving_exports_refuse_what_the_engines_cannot_run():
    disagg = {"model": "llama-3.1-8b", "hardware": {"gpus": 2},
              "disaggregation": {"prefill_replicas": 1, "decode_replicas": 1}}
    with pytest.raises(ExportError, match="disaggregated"):
        export_serve(parse_serve_scenario(disagg), "vllm")
    with pytest.raises(ExportError, match="does not stream weights"):
        export_serve(_serve("offload-weights"), "trtllm")
    with pytest.raises(ExportError, match="static batching"):
        export_serve(parse_serve_scenario({"scheduler": {"batching": "static"}}), "sglang")


def test_a_format_of_the_other_kind_is_named():
    from sextant.errors import SpecError

    with pytest.raises(SpecError, match="exports a serving scenario"):
        export_train(_train(TRAIN["llama8b-fsdp"]), "vllm")


# --- the scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,tree", [("megatron", VALIDATED["exports"]["llama70b-fp8-vpp"]["scenario"]),
                                      ("deepspeed", {"model": "llama-3.1-8b", "hardware": {"gpus": 16},
                                                     "strategy": {"zero": 2}}),
                                      ("trtllm", SERVE["llama70b-fp8-tp4x2"])])
def test_the_launch_script_writes_its_files_and_is_valid_bash(fmt, tree, tmp_path):
    scenario = parse_serve_scenario(tree) if fmt == "trtllm" else _train(tree)
    launch = export_serve(scenario, fmt) if fmt == "trtllm" else export_train(scenario, fmt)
    script = launch.script()
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    # Run everything but the launch itself: the files come out as exported.
    body = script.rsplit("\n" + launch.command_line(), 1)[0].replace(": \"${", ": \"${IGNORED:-x}\" # ${")
    subprocess.run(["bash", "-c", body], cwd=tmp_path, check=True)
    for name, content in launch.files.items():
        assert (tmp_path / name).read_text() == content


# --- the command line -------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    from sextant.cli.app import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_export_command_prints_a_runnable_script(capsys):
    rc, out, _ = run(capsys, "export", "megatron")
    assert rc == 0 and out.startswith("#!/usr/bin/env bash")
    assert subprocess.run(["bash", "-n"], input=out, text=True, check=False).returncode == 0
    assert "--tensor-model-parallel-size" in out


def test_export_command_reads_a_serving_scenario_and_writes_the_script(capsys, tmp_path):
    scenario = tmp_path / "serve.yaml"
    scenario.write_text(yaml.safe_dump(SERVE["llama70b-fp8-tp4x2"]))
    target = tmp_path / "launch.sh"
    rc, out, _ = run(capsys, "export", "vllm", "-s", str(scenario), "--out", str(target))
    assert rc == 0 and "written to" in out
    assert "--tensor-parallel-size 4" in target.read_text()


def test_plan_train_emits_the_plans_best_configuration(capsys):
    rc, out, _ = run(capsys, "plan", "train", "--framework", "megatron-core-2024", "--emit", "megatron", "--json")
    assert rc == 0
    result = json.loads(out)
    best, launch = result["best"], result["launch"]
    got = parse("megatron-lm", launch["argv"][launch["argv"].index("pretrain_gpt.py") + 1:])
    assert (got["--tensor-model-parallel-size"], got["--pipeline-model-parallel-size"],
            got.get("--context-parallel-size", 1), got["--micro-batch-size"]) == (
        best["tp"], best["pp"], best["cp"], best["micro_batch"])


def test_a_plans_chosen_scenario_predicts_what_the_plan_reported():
    from sextant.plan.search import chosen_scenario, plan_train
    from sextant.train.predict import predict_train

    base = _train({"model": "llama-3.1-8b", "framework": "megatron-core-2024", "hardware": {"gpus": 16},
                   "workload": {"global_batch": 128, "seq_len": 8192}})
    plan = plan_train(base, [16], top_k=2)
    for row in plan.top:
        again = predict_train(chosen_scenario(base, row))
        assert again.step_time_s == pytest.approx(row.step_time_s, rel=1e-9)
        assert again.memory_gb_per_gpu["total"] == pytest.approx(row.memory_gb_per_gpu["total"], rel=1e-9)


def test_plan_serve_emits_the_best_placement(capsys, tmp_path):
    target = tmp_path / "serve.sh"
    rc, out, _ = run(capsys, "plan", "serve", "--model", "llama-3.1-8b", "--gpus", "2", "--input-len", "512",
                     "--output-len", "128", "--num-requests", "64", "--emit", "sglang", "--emit-out", str(target),
                     "--json")
    assert rc == 0
    policy = json.loads(out)["best_policy"]
    got = parse("sglang", json.loads(out)["launch"]["argv"][3:])
    assert (got["--tp-size"], got.get("--dp-size", 1)) == (policy["tp"], policy["replicas"])
    assert target.read_text().startswith("#!/usr/bin/env bash")


@pytest.mark.parametrize("argv,message", [
    (("predict", "train", "--emit", "vllm"), "is a serving format"),
    (("predict", "serve", "--emit", "megatron"), "is a training format"),
    (("predict", "train", "--emit-out", "x.sh"), "give --emit"),
    (("export", "nemo"), "is not a format"),
])
def test_emit_flags_refuse_a_wrong_format_before_any_work(capsys, argv, message):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and message in err


@pytest.mark.parametrize("fmt,name", [("sglang", "speculative"), ("vllm", "offload-weights"), ("trtllm", "speculative")])
def test_the_printed_command_line_is_the_argv(fmt, name):
    """One option per line for reading, but the shell sees exactly the exported words (a value
    such as SGLang's --chunked-prefill-size -1 stays with its flag)."""
    import shlex

    launch = export_serve(_serve(name) if name != "speculative" or fmt != "sglang" else parse_serve_scenario(
        {**SERVE[name], "scheduler": {"batching": "continuous"}}), fmt)
    assert shlex.split(launch.command_line().replace("\\\n", " ")) == launch.argv
    if fmt == "sglang":
        assert "    --chunked-prefill-size -1" in launch.command_line()


@pytest.mark.parametrize("fmt", ["vllm", "sglang"])
def test_a_replica_over_two_nodes_is_launched_on_each_with_its_rank(fmt):
    scenario = parse_serve_scenario({"model": "llama-3.1-405b", "hardware": {"gpu": "h100-sxm", "gpus": 16},
                                     "deployment": {"tp": 8, "pp": 2}, "workload": {"input_len": 512, "output_len": 64}})
    launch = export_serve(scenario, fmt)
    assert "${NODE_RANK}" in launch.argv and any("${MASTER_ADDR}" in a for a in launch.argv)
    on_node_1 = [a.replace("${NODE_RANK}", "1").replace("${MASTER_ADDR}", "10.0.0.1") for a in launch.argv]
    got = parse(fmt, on_node_1[3:])  # after `vllm serve MODEL` or `python -m sglang.launch_server`
    assert (got["--nnodes"], got["--node-rank"]) == (2, 1)
    assert ': "${NODE_RANK:?' in launch.script() and '--node-rank ${NODE_RANK}' in launch.command_line()
    assert not any(a.startswith("--data-parallel-size") or a == "--dp-size" for a in launch.argv)
