"""A serving scenario resolved once: its framework preset applied, its model (and draft), cluster
and profile found, the deployment checked (layout rules, replicas, GPUs), and every object the
cost model derives from them (devices, fabric, tier rates, the replica's layout) computed, in one
frozen :class:`ServeContext`. What depends on the requests (token budget, KV-cache capacity,
offload plan) is the deployment's (``sextant.serve.deploy``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sextant.cost.comm import Fabric
from sextant.cost.host_compute import host_device
from sextant.cost.inference import Layout
from sextant.cost.layer import Device, device_for
from sextant.cost.precision import ELEMENT_BYTES, GEMM_DTYPE, KV_BYTES, gemm_operand_bytes, weight_bytes
from sextant.cost.tiers import TierRates, tier_rates
from sextant.errors import SpecError
from sextant.resolve.framework import apply_serving_framework
from sextant.resolve.hardware import cluster_and_profile, model_of
from sextant.resolve.layout import check_serving
from sextant.spec.hardware import ClusterSpec, GPUSpec
from sextant.spec.model import ModelSpec
from sextant.spec.profile import HardwareProfile
from sextant.spec.serving import ServeScenario


def serving_device(gpu: GPUSpec, profile: HardwareProfile, precision: str,
                   w4_bytes: float = weight_bytes("w4a16")) -> tuple[Device, Device]:
    """(device for the decoder's GEMMs at weight ``precision``, 16-bit device for the output head);
    ``w4_bytes``: bytes per W4A16 weight with its group scales. Activations and attention run in
    the GPU's 16-bit format (bf16 where it has one); W4A16 dequantizes on the vector units
    (packed half2 arithmetic: twice the fp32 rate)."""
    half = "bf16" if "bf16" in gpu.peak_flops else "fp16"
    dtype = GEMM_DTYPE[precision]
    if dtype == "fp16" and "fp16" not in gpu.peak_flops:
        dtype = half
    w4 = precision == "w4a16"
    dequant = 2.0 * gpu.peak_flops.get("fp32", gpu.peak(dtype) / 16) if w4 else 0.0
    dev = device_for(gpu, profile, dtype, half, gemm_bytes=gemm_operand_bytes(precision),
                     act_bytes=ELEMENT_BYTES[half], weight_bytes=w4_bytes if w4 else None, dequant_flops=dequant)
    head = device_for(gpu, profile, half, half, gemm_bytes=ELEMENT_BYTES[half], act_bytes=ELEMENT_BYTES[half])
    return dev, head


@dataclass(frozen=True)
class ServeContext:
    """A serving scenario as the simulator's deployment needs it (see the module docstring)."""

    scenario: ServeScenario  # with its framework preset applied
    model: ModelSpec
    cluster: ClusterSpec  # as the scenario names it
    used: ClusterSpec  # the GPUs the replicas occupy
    profile: HardwareProfile
    prefill_replicas: int  # disaggregated: prefill-only replicas (0 otherwise)
    decode_replicas: int  # replicas that decode (all of them when not disaggregated)
    #: The target model's replica: its device (the host CPU when the target runs there), output
    #: head, KV width and fabric.
    layout: Layout
    tiers: TierRates
    draft_model: ModelSpec | None = None
    draft_layout: Layout | None = None

    @property
    def replicas(self) -> int:
        return self.prefill_replicas + self.decode_replicas

    @property
    def target_on_cpu(self) -> bool:
        spec = self.scenario.speculative
        return spec is not None and spec.target_device == "cpu"

    @property
    def iteration_overhead_s(self) -> float:
        return self.layout.iteration_overhead_s


def _replicas(scenario: ServeScenario) -> tuple[int, int]:
    """(prefill replicas, decode replicas), checked against the disaggregation and the GPUs."""
    dep, disagg, gpus = scenario.deployment, scenario.disaggregation, scenario.hardware.gpus
    if disagg is not None:
        replicas = disagg.prefill_replicas + disagg.decode_replicas
        if dep.replicas is not None and dep.replicas != replicas:
            raise SpecError(f"replicas={dep.replicas} but disaggregation asks {disagg.prefill_replicas} prefill + "
                            f"{disagg.decode_replicas} decode", field="replicas")
    else:
        replicas = dep.replicas if dep.replicas is not None else max(gpus // dep.gpus_per_replica, 1)
    needed = replicas * dep.gpus_per_replica
    if needed != gpus:  # never leave GPUs idle without a word
        fix = (f"give --gpus {needed}" if needed > gpus or dep.replicas is not None or disagg is not None
               else f"give --gpus {needed} or a multiple of tp x pp = {dep.gpus_per_replica}")
        raise SpecError(f"{replicas} replica(s) x tp {dep.tp} x pp {dep.pp} need {needed} GPUs; {gpus} given: {fix}",
                        field="gpus")
    if scenario.speculative is not None and (disagg is not None or scenario.scheduler.batching == "static"):
        raise SpecError("speculative decoding is modelled with continuous or chunked batching on aggregated "
                        "replicas", field="speculative")
    return (disagg.prefill_replicas, disagg.decode_replicas) if disagg else (0, replicas)


def resolve_serve(scenario: ServeScenario) -> ServeContext:
    """The context of a serving scenario (see the module docstring)."""
    scenario = apply_serving_framework(scenario)
    model = model_of(scenario.model)
    dep = scenario.deployment
    cluster, profile = cluster_and_profile(scenario.hardware)
    check_serving(model, dep.tp, dep.pp, dep.ep, cluster)
    prefill, decode = _replicas(scenario)
    needed = (prefill + decode) * dep.gpus_per_replica
    gpu = cluster.gpu
    dev, head = serving_device(gpu, profile, dep.precision,
                               weight_bytes("w4a16", dep.weight_group_size, dep.weight_zero_point))
    used = ClusterSpec(node=cluster.node, gpu=gpu, num_gpus=min(needed, scenario.hardware.gpus))
    tiers = tier_rates(used, profile)
    layout = Layout(dev=dev, tp=dep.tp, pp=dep.pp, ep=dep.ep, kv_bytes=KV_BYTES[dep.resolved_kv_precision],
                    fabric=Fabric.of(used, profile) if needed > 1 else None,
                    gpus_per_node=cluster.node.gpus_per_node,
                    iteration_overhead_s=(scenario.scheduler.iteration_overhead_ms or 0.0) / 1e3, head_dev=head,
                    grouped_kv_reads=dep.decode_attention == "grouped")
    draft_model = draft_layout = None
    spec = scenario.speculative
    if spec is not None:
        draft_model = model_of(spec.draft_model)
        draft_layout = dataclasses.replace(layout, pp=1, ep=1) if draft_model.moe is None else layout
        check_serving(draft_model, dep.tp, 1, 1, cluster)
        if spec.target_device == "cpu":
            # Dovetail: the target's layers run on the host CPU; the GPU keeps the draft only.
            host = host_device(tiers, profile, weight_bytes(dep.precision, dep.weight_group_size, dep.weight_zero_point))
            layout = dataclasses.replace(layout, dev=host, head_dev=None, fabric=None)
    return ServeContext(scenario=scenario, model=model, cluster=cluster, used=used, profile=profile,
                        prefill_replicas=prefill, decode_replicas=decode, layout=layout, tiers=tiers,
                        draft_model=draft_model, draft_layout=draft_layout)
