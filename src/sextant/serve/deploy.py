"""Resolve a serving scenario into what the simulator runs: per-instance layouts, iteration
costs and KV-cache capacity, after checking the deployment can exist at all."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sextant.catalog import get_model
from sextant.catalog.frameworks import fill_unset, get_serving_framework
from sextant.cost import comm
from sextant.cost.host_compute import host_device
from sextant.cost.inference import Layout, kv_cache_bytes_per_token, weight_bytes_per_gpu
from sextant.cost.layer import Device
from sextant.cost.tiers import tier_rates
from sextant.errors import InfeasibleError, SpecError
from sextant.serve.offload import OffloadPlan, plan_cpu_target, plan_offload
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.serving import ServeScenario
from sextant.train.predict import cluster_and_profile
from sextant.units import GB

#: Bytes per cached element by KV precision; INT4 adds an fp16 scale per 64 elements (KIVI-style
#: group quantization, Liu et al. 2024).
KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.0 / 64}
#: Bytes per weight element (W4A16: see :func:`weight_bytes`).
WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "w4a16": 0.5 + 2.0 / 128}


def weight_bytes(precision: str, group_size: int = 128, zero_point: bool = False) -> float:
    """Bytes per weight element; W4A16 stores an fp16 scale (and, asymmetric, an fp16 zero point)
    per group of ``group_size`` weights (AWQ and GPTQ: 128, symmetric; ZeRO-Inference: 64 with a
    minimum)."""
    if precision != "w4a16":
        return WEIGHT_BYTES[precision]
    return 0.5 + (4.0 if zero_point else 2.0) / group_size
#: Tensor-core dtype the GEMMs run in, per weight precision.
GEMM_DTYPE = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "w4a16": "fp16"}
#: Bytes of fp32 logits per sampled row (the sampler's softmax input).
LOGIT_BYTES = 4.0


def apply_serving_framework(scenario: ServeScenario) -> ServeScenario:
    """Fill the scheduler fields the scenario left unset from its framework preset."""
    if scenario.framework is None:
        return scenario
    return fill_unset(scenario, get_serving_framework(scenario.framework), ("scheduler", "deployment", "offload"))


def serving_device(gpu, profile: HardwareProfile, precision: str,
                   w4_bytes: float = WEIGHT_BYTES["w4a16"]) -> tuple[Device, Device]:
    """(device for the decoder's GEMMs at ``precision``, 16-bit device for the output head);
    ``w4_bytes``: bytes per W4A16 weight with its group scales."""
    dtype = GEMM_DTYPE[precision]
    half = "bf16" if "bf16" in gpu.peak_flops else "fp16"
    peak = gpu.peak(dtype if dtype != "fp16" or "fp16" in gpu.peak_flops else half)
    dequant = 0.0
    weight_bytes = None
    if precision == "w4a16":
        weight_bytes = w4_bytes
        # Packed half2 arithmetic on the vector units: twice the fp32 rate.
        dequant = 2.0 * gpu.peak_flops.get("fp32", peak / 16)
    table = profile.gemm_tables.get(dtype)
    dev = Device(
        gemm_peak=peak,
        attention_peak=gpu.peak(half),
        mem_bw=gpu.memory.read_bytes_per_s,
        gemm_bytes=WEIGHT_BYTES[precision] if precision in ("fp8", "int8") else 2.0,
        profile=profile,
        act_bytes=2.0,
        gemm_table=table,
        attention_table=profile.attention_tables.get(half),
        host_synchronous=gpu.architecture.startswith("cpu"),
        gemm_scale=1.0 if table is not None else profile.gemm_dtype_efficiency.get(dtype, 1.0),
        weight_bytes=weight_bytes,
        dequant_flops=dequant,
    )
    head = dataclasses.replace(dev, gemm_peak=gpu.peak(half), gemm_bytes=2.0, weight_bytes=None, dequant_flops=0.0,
                               gemm_scale=1.0, gemm_table=profile.gemm_tables.get(half))
    return dev, head


@dataclass(frozen=True)
class Instance:
    """One kind of serving instance (all replicas alike): its layout and KV-cache capacity."""

    layout: Layout
    kv_bytes_per_token: float  # per GPU (its layers and heads)
    kv_capacity_tokens: int  # per virtual engine (pipeline-parallel replicas run pp of them)
    kv_capacity_blocks: int
    weights_bytes_per_gpu: float
    activation_bytes_per_gpu: float
    memory_budget_bytes: float
    engines_per_replica: int
    offload: OffloadPlan


@dataclass(frozen=True)
class Resolved:
    scenario: ServeScenario
    model: ModelSpec
    cluster: ClusterSpec
    profile: HardwareProfile
    instance: Instance
    draft: Layout | None
    draft_model: ModelSpec | None
    prefill_replicas: int  # disaggregated: prefill-only replicas (0 otherwise)
    decode_replicas: int  # replicas that decode (all of them when not disaggregated)
    token_budget: int
    iteration_overhead_s: float


def model_spec(name_or_spec: str | ModelSpec) -> ModelSpec:
    """A scenario's model: a catalog name or config path resolved, a spec passed through."""
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_model(name_or_spec)


def check_layout(model: ModelSpec, tp: int, pp: int, ep: int, cluster: ClusterSpec) -> None:
    if model.num_heads % tp:
        raise SpecError(f"tp={tp} does not divide {model.num_heads} attention heads", field="tp")
    if model.num_kv_heads > tp and model.num_kv_heads % tp:
        raise SpecError(f"tp={tp} does not divide {model.num_kv_heads} KV heads", field="tp")
    if model.num_layers % pp:
        raise SpecError(f"pp={pp} does not divide {model.num_layers} layers", field="pp")
    if tp > cluster.node.gpus_per_node:
        raise SpecError(f"tp={tp} exceeds the {cluster.node.gpus_per_node} GPUs of one {cluster.node.name}", field="tp")
    if ep > 1 and model.moe is None:
        raise SpecError(f"ep={ep} needs a mixture-of-experts model; {model.name} is dense", field="ep")
    if model.moe is not None and model.moe.num_experts % ep:
        raise SpecError(f"ep={ep} does not divide {model.moe.num_experts} experts", field="ep")


def activation_bytes(model: ModelSpec, tp: int, tokens: int, sequences: int) -> float:
    """Peak forward activations of one iteration on one GPU (what vLLM's profiling run finds):
    the residual stream and the normalized input stay live while either the attention block
    (QKV and its output) or the MLP (its up-projection and activation output) runs; plus the
    fp32 logits of the sampled rows. Buffers are reused from layer to layer."""
    h, t = model.hidden_size, tp
    ffn = model.ffn_hidden_size if model.moe is None else max(model.ffn_hidden_size,
                                                              model.moe.expert_ffn_hidden_size * model.moe.top_k)
    attention = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim / t + h
    mlp = (3 if model.gated_mlp else 2) * ffn / t
    return 2.0 * tokens * (2 * h + max(attention, mlp)) + LOGIT_BYTES * sequences * model.vocab_size / t


def _working_set(scenario: ServeScenario, streamed: bool, iteration_tokens: int) -> tuple[int, int]:
    """Tokens and sequences one iteration's activations hold on the GPU: the most an iteration
    runs; with offloading, one micro-batch of them (FlexGen's GPU batch: the GPU computes one at
    a time and the layer's activations move on)."""
    sched = scenario.scheduler
    tokens, seqs = iteration_tokens, sched.max_batch
    if streamed:
        parts = scenario.offload.micro_batches
        tokens, seqs = -(-tokens // parts), -(-seqs // parts)
    return tokens, seqs


def resolve(scenario: ServeScenario, longest_request: int, longest_prompt: int) -> Resolved:
    scenario = apply_serving_framework(scenario)
    model = model_spec(scenario.model)
    dep, sched = scenario.deployment, scenario.scheduler
    per_replica = dep.gpus_per_replica
    disagg = scenario.disaggregation
    hw = scenario.hardware
    cluster, profile = cluster_and_profile(hw)
    check_layout(model, dep.tp, dep.pp, dep.ep, cluster)
    if disagg is not None:
        replicas = disagg.prefill_replicas + disagg.decode_replicas
        if dep.replicas is not None and dep.replicas != replicas:
            raise SpecError(f"replicas={dep.replicas} but disaggregation asks {disagg.prefill_replicas} prefill + "
                            f"{disagg.decode_replicas} decode", field="replicas")
    else:
        replicas = dep.replicas if dep.replicas is not None else max(hw.gpus // per_replica, 1)
    needed = replicas * per_replica
    if needed > hw.gpus:
        raise SpecError(f"{replicas} replica(s) x tp {dep.tp} x pp {dep.pp} need {needed} GPUs; {hw.gpus} given",
                        field="gpus")
    if scenario.speculative is not None and (disagg is not None or sched.batching == "static"):
        raise SpecError("speculative decoding is modelled with continuous or chunked batching on aggregated "
                        "replicas", field="speculative")
    gpu = cluster.gpu
    dev, head = serving_device(gpu, profile, dep.precision,
                               weight_bytes("w4a16", dep.weight_group_size, dep.weight_zero_point))
    used = ClusterSpec(node=cluster.node, gpu=gpu, num_gpus=min(needed, hw.gpus))
    fabric = comm.Fabric.of(used, profile)
    overhead_ms = sched.iteration_overhead_ms or 0.0
    kv_bytes = KV_BYTES[dep.resolved_kv_precision]
    layout = Layout(dev=dev, tp=dep.tp, pp=dep.pp, ep=dep.ep, kv_bytes=kv_bytes,
                    fabric=fabric if needed > 1 else None, gpus_per_node=cluster.node.gpus_per_node,
                    iteration_overhead_s=overhead_ms / 1e3, head_dev=head,
                    grouped_kv_reads=dep.decode_attention == "grouped")

    # Without chunked prefill a whole sequence must fit one iteration, since a preempted one is
    # prefilled again with what it generated: vLLM's default max_num_batched_tokens is
    # max(max_model_len, 2048), and its SchedulerConfig refuses one below max_model_len.
    default_budget = {"chunked": 8192, "continuous": max(8192, longest_request)}.get(sched.batching,
                                                                                    max(8192, longest_prompt))
    token_budget = sched.token_budget or default_budget
    budget = gpu.memory.capacity_bytes * sched.gpu_memory_utilization
    # The most tokens one iteration runs: a whole static batch's prompts, or the token budget.
    iteration_tokens = sched.max_batch * longest_prompt if sched.batching == "static" else token_budget
    draft_layout = draft_model = None
    if scenario.speculative is not None:
        draft_model = model_spec(scenario.speculative.draft_model)
        draft_layout = dataclasses.replace(layout, pp=1, ep=1) if draft_model.moe is None else layout
        check_layout(draft_model, dep.tp, 1, 1, cluster)
    if scenario.speculative is not None and scenario.speculative.target_device == "cpu":
        # Dovetail: the target's layers run on the host CPU; the GPU keeps the draft only.
        tiers = tier_rates(used, profile)
        host = host_device(tiers, profile, weight_bytes(dep.precision, dep.weight_group_size, dep.weight_zero_point))
        layout = dataclasses.replace(layout, dev=host, head_dev=None, fabric=None)
        offload = plan_cpu_target(scenario, model, draft_model, layout, draft_layout, tiers)
    else:
        offload = plan_offload(scenario, model, layout, used, profile, iteration_tokens)
    weights = offload.gpu_weight_bytes
    if draft_model is not None:
        weights += weight_bytes_per_gpu(draft_model, draft_layout)
    act_tokens, act_seqs = _working_set(scenario, offload.stream is not None, iteration_tokens)
    gpu_model = draft_model if offload.target_on_cpu else model
    activations = activation_bytes(gpu_model, dep.tp, act_tokens, act_seqs)
    target_kv = kv_cache_bytes_per_token(model, kv_bytes, dep.tp) / dep.pp
    draft_kv = kv_cache_bytes_per_token(draft_model, kv_bytes, dep.tp) if draft_model is not None else 0.0
    kv_per_token = target_kv + draft_kv
    free = gpu_free = budget - weights - activations
    if weights > budget:
        raise InfeasibleError(
            f"{model.name} weights need {weights / GB:.1f} GB per GPU at {dep.precision} with tp={dep.tp} pp={dep.pp}; "
            f"{gpu.name} offers {budget / GB:.1f} GB ({sched.gpu_memory_utilization:.0%} of "
            f"{gpu.memory.capacity_bytes / GB:.1f}); raise tp or pp, quantize the weights, or stream them from "
            "host memory (--offload-weights cpu)")
    engines = dep.pp
    if offload.kv_off_gpu:
        if free < 0:
            raise InfeasibleError(
                f"{weights / GB:.1f} GB of weights and buffers and {activations / GB:.1f} GB of activations exceed "
                f"the {budget / GB:.1f} GB budget of one {gpu.name}; lower the batch or the token budget")
        free = offload.kv_capacity_bytes
    if offload.target_on_cpu:  # the target's cache in host memory, the draft's on the GPU
        tokens_total = max(int(min(free // target_kv, gpu_free // draft_kv)), 0)
    else:
        tokens_total = max(int(free // kv_per_token), 0)
    blocks = tokens_total // sched.block_size // engines
    if blocks * sched.block_size < longest_request:
        raise InfeasibleError(
            f"the KV cache holds {blocks * sched.block_size} tokens per engine after {weights / GB:.1f} GB of weights "
            f"and {activations / GB:.1f} GB of activations; the longest request needs {longest_request}; "
            "raise tp, quantize the KV cache, lower the token budget or keep the cache in host memory "
            "(--offload-kv cpu)", resource="KV cache")
    instance = Instance(layout=layout, kv_bytes_per_token=kv_per_token, kv_capacity_tokens=blocks * sched.block_size,
                        kv_capacity_blocks=blocks, weights_bytes_per_gpu=weights, activation_bytes_per_gpu=activations,
                        memory_budget_bytes=budget, engines_per_replica=engines, offload=offload)
    return Resolved(
        scenario=scenario, model=model, cluster=cluster, profile=profile, instance=instance,
        draft=draft_layout, draft_model=draft_model,
        prefill_replicas=disagg.prefill_replicas if disagg else 0,
        decode_replicas=disagg.decode_replicas if disagg else replicas,
        token_budget=token_budget, iteration_overhead_s=overhead_ms / 1e3,
    )


def kv_transfer_seconds(res: Resolved, tokens: float) -> float:
    """Time to move ``tokens`` tokens of KV cache from a prefill to a decode instance: every GPU
    of the prefill instance sends its shard in parallel over its share of the link."""
    fab = res.instance.layout.fabric or comm.Fabric.of(res.cluster, res.profile)
    link = res.scenario.disaggregation.link if res.scenario.disaggregation else "network"
    bw, lat = (fab.intra_bw, fab.intra_latency) if link == "intra_node" else (fab.inter_bw, fab.inter_latency)
    return tokens * res.instance.kv_bytes_per_token / bw + lat
