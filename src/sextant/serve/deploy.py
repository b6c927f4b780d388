"""What the simulator runs for a resolved serving scenario: per-instance layouts, iteration
costs' inputs and KV-cache capacity, sized for the longest request of the workload."""

from __future__ import annotations

from dataclasses import dataclass

from sextant.cost import comm
from sextant.cost.inference import Layout, kv_cache_bytes_per_token, weight_bytes_per_gpu
from sextant.cost.precision import ELEMENT_BYTES, LOGIT_BYTES
from sextant.errors import InfeasibleError
from sextant.resolve.serve import ServeContext, resolve_serve
from sextant.serve.offload_plan import OffloadPlan, plan_cpu_target, plan_offload
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.serving import ServeScenario
from sextant.units import GiB


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
class Deployment:
    """A resolved scenario deployed for a workload: its instance and token budget."""

    ctx: ServeContext
    instance: Instance
    token_budget: int

    @property
    def scenario(self) -> ServeScenario:
        return self.ctx.scenario

    @property
    def model(self) -> ModelSpec:
        return self.ctx.model

    @property
    def cluster(self) -> ClusterSpec:
        return self.ctx.cluster

    @property
    def profile(self) -> HardwareProfile:
        return self.ctx.profile


def token_budget(ctx: ServeContext, longest_request: int, longest_prompt: int) -> int:
    """Tokens one iteration may run (vLLM's ``max_num_batched_tokens``): the scenario's, else the
    engine's default. Without chunked prefill a whole sequence must fit one iteration, since a
    preempted one is prefilled again with what it generated: vLLM's default is
    max(max_model_len, 2048), and its SchedulerConfig refuses one below max_model_len."""
    sched = ctx.scenario.scheduler
    default = {"chunked": 8192, "continuous": max(8192, longest_request)}.get(sched.batching,
                                                                             max(8192, longest_prompt))
    return sched.token_budget or default


def deploy(ctx: ServeContext, longest_request: int, longest_prompt: int) -> Deployment:
    """Size one instance for requests of up to ``longest_request`` tokens (prompt and output)."""
    sched = ctx.scenario.scheduler
    budget = token_budget(ctx, longest_request, longest_prompt)
    # The most tokens one iteration runs: a whole static batch's prompts, or the token budget.
    iteration_tokens = sched.max_batch * longest_prompt if sched.batching == "static" else budget
    offload = plan_cpu_target(ctx) if ctx.target_on_cpu else plan_offload(ctx, iteration_tokens)
    instance = _instance(ctx, offload, iteration_tokens, longest_request)
    return Deployment(ctx=ctx, instance=instance, token_budget=budget)


def deploy_scenario(scenario: ServeScenario, longest_request: int, longest_prompt: int) -> Deployment:
    """:func:`deploy` of a scenario resolved here (``sextant.resolve.serve.resolve_serve``)."""
    return deploy(resolve_serve(scenario), longest_request, longest_prompt)


def _instance(ctx: ServeContext, offload: OffloadPlan, iteration_tokens: int, longest_request: int) -> Instance:
    """GPU memory of one instance (weights and buffers, activations) and the KV cache left over."""
    scenario, model, draft_model = ctx.scenario, ctx.model, ctx.draft_model
    dep, sched, gpu = scenario.deployment, scenario.scheduler, ctx.cluster.gpu
    budget = gpu.memory.capacity_bytes * sched.gpu_memory_utilization
    weights = offload.gpu_weight_bytes
    if draft_model is not None:
        weights += weight_bytes_per_gpu(draft_model, ctx.draft_layout)
    act_tokens, act_seqs = _working_set(scenario, offload.stream is not None, iteration_tokens)
    activations = activation_bytes(draft_model if offload.target_on_cpu else model, dep.tp, act_tokens, act_seqs,
                                   sched.sampler_profile_bytes)
    budget, outside_kv = kv_cache_budget(sched, gpu.memory.capacity_bytes, activations, dep.tp)
    kv_bytes = ctx.layout.kv_bytes
    target_kv = kv_cache_bytes_per_token(model, kv_bytes, dep.tp) / dep.pp
    draft_kv = kv_cache_bytes_per_token(draft_model, kv_bytes, dep.tp) if draft_model is not None else 0.0
    kv_per_token = target_kv + draft_kv
    free = gpu_free = budget - weights - outside_kv
    if weights > budget:
        raise InfeasibleError(
            f"{model.name} weights need {weights / GiB:.1f} GiB per GPU at {dep.precision} with tp={dep.tp} pp={dep.pp}; "
            f"{gpu.name} offers {budget / GiB:.1f} GiB ({sched.gpu_memory_utilization:.0%} of "
            f"{gpu.memory.capacity_bytes / GiB:.1f}); raise tp or pp, quantize the weights, or stream them from "
            "host memory (--offload-weights cpu)")
    engines = dep.pp
    if offload.kv_off_gpu:
        if free < 0:
            raise InfeasibleError(
                f"{weights / GiB:.1f} GiB of weights and buffers and {activations / GiB:.1f} GiB of activations exceed "
                f"the {budget / GiB:.1f} GiB budget of one {gpu.name}; lower the batch or the token budget")
        free = offload.kv_capacity_bytes
    if offload.target_on_cpu:  # the target's cache in host memory, the draft's on the GPU
        tokens_total = max(int(min(free // target_kv, gpu_free // draft_kv)), 0)
    else:
        tokens_total = max(int(free // kv_per_token), 0)
    blocks = tokens_total // sched.block_size // engines
    if blocks * sched.block_size < longest_request:
        raise InfeasibleError(
            f"the KV cache holds {blocks * sched.block_size} tokens per engine after {weights / GiB:.1f} GiB of weights "
            f"and {activations / GiB:.1f} GiB of activations; the longest request needs {longest_request}; "
            "raise tp, quantize the KV cache, lower the token budget or keep the cache in host memory "
            "(--offload-kv cpu)", resource="KV cache")
    return Instance(layout=ctx.layout, kv_bytes_per_token=kv_per_token, kv_capacity_tokens=blocks * sched.block_size,
                    kv_capacity_blocks=blocks, weights_bytes_per_gpu=weights, activation_bytes_per_gpu=activations,
                    memory_budget_bytes=budget, engines_per_replica=engines, offload=offload)


def kv_cache_budget(sched, capacity_bytes: float, activations: float, tp: int = 1) -> tuple[float, float]:
    """(memory the engine may fill, what of it is not KV cache besides the weights), per GPU, by
    the engine's rule (``Scheduler.kv_sizing``):

    - ``profiled`` (vLLM, ``Worker.determine_num_available_blocks`` in V0 and
      ``Worker.determine_available_memory`` in V1): ``gpu_memory_utilization`` x the GPU's memory,
      less the weights, the peak of a profiling run of ``max_num_batched_tokens`` tokens and
      ``max_num_seqs`` sampled rows, and the memory the process holds outside PyTorch
      (``non_torch_memory``: CUDA context; with tensor parallelism NCCL's communicators and the
      custom all-reduce buffers as well);
    - ``static_fraction`` (SGLang, ``ModelRunner.profile_max_num_token``): ``mem_fraction_static`` x
      the memory free when the engine starts (the GPU's less the runtime), less the weights; the
      activations and CUDA graphs live in the remaining fraction."""
    runtime = (sched.runtime_gib + (sched.collective_runtime_gib if tp > 1 else 0.0)) * GiB
    if sched.kv_sizing == "static_fraction":
        return (capacity_bytes - runtime) * sched.gpu_memory_utilization, 0.0
    return capacity_bytes * sched.gpu_memory_utilization, activations + runtime


def activation_bytes(model: ModelSpec, tp: int, tokens: int, sequences: int,
                     sampler_bytes: float = LOGIT_BYTES) -> float:
    """Peak forward activations of one iteration on one GPU (what vLLM's profiling run finds):
    the residual stream and the normalized input stay live while either the attention block
    (QKV and its output) or the MLP (its up-projection and activation output) runs; plus what the
    sampler holds per logit of the sampled rows, whole rows of the vocabulary on every rank
    (``sampler_bytes``: the fp32 logits, or more where the profiling run samples through
    top-k/top-p). Buffers are reused from layer to layer."""
    h, t = model.hidden_size, tp
    ffn = model.ffn_hidden_size if model.moe is None else max(model.ffn_hidden_size,
                                                              model.moe.expert_ffn_hidden_size * model.moe.top_k)
    attention = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim / t + h
    mlp = (3 if model.gated_mlp else 2) * ffn / t
    # The sampler sees whole rows of the vocabulary: vLLM gathers the tensor-parallel logits
    # (tensor_model_parallel_gather / all_gather in its LogitsProcessor) before sampling.
    return ELEMENT_BYTES["bf16"] * tokens * (2 * h + max(attention, mlp)) + sampler_bytes * sequences * model.vocab_size


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


def kv_transfer_seconds(res: Deployment, tokens: float) -> float:
    """Time to move ``tokens`` tokens of KV cache from a prefill to a decode instance: every GPU
    of the prefill instance sends its shard in parallel over its share of the link."""
    fab = res.instance.layout.fabric or comm.Fabric.of(res.cluster, res.profile)
    link = res.scenario.disaggregation.link if res.scenario.disaggregation else "network"
    bw, lat = (fab.intra_bw, fab.intra_latency) if link == "intra_node" else (fab.inter_bw, fab.inter_latency)
    return tokens * res.instance.kv_bytes_per_token / bw + lat
