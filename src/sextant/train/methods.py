"""How a training method (cost/finetune.py) changes one layer's work and activations, applied
to the per-layer table of :func:`sextant.train.step.evaluate`."""

from __future__ import annotations

import numpy as np

from sextant.cost.compute import memory_bound_time
from sextant.cost.finetune import linear_shapes
from sextant.cost.memory import layer_activation_bytes
from sextant.cost.params import count_params
from sextant.resolve.train import TrainContext


def apply_method(ctx: TrainContext, p: dict, tp, log_fwd, emb_fwd, kw: dict, b, s_local, sp, rc) -> None:  # noqa: PLR0913
    """Adjust one layer's work and activations for the training method (cost/finetune.py)."""
    mc, method = ctx.method, ctx.workload.method
    if method == "full" or method == "galore":
        return
    model, dev = ctx.model, ctx.device
    layer_weights = count_params(model).dense_layer / tp
    if mc.dequant_bytes_per_weight:
        dequant = memory_bound_time(layer_weights * mc.dequant_bytes_per_weight, mem_bw=dev.mem_bw,
                                    profile=ctx.profile, kernels=len(linear_shapes(model)))
        p["fwd_elementwise"] = p["fwd_elementwise"] + dequant
        p["bwd_elementwise"] = p["bwd_elementwise"] + dequant
        p["recompute"] = np.where(p["recompute"] > 0, p["recompute"] + dequant, 0.0)
    p["bwd_gemm"] = p["bwd_gemm"] * mc.backward_gemm_factor
    if not mc.backward:
        # Two forwards per micro-batch, an in-place update (read and write every weight once),
        # nothing saved for a backward: the layer's activations live only while it runs.
        update = memory_bound_time(layer_weights * 2.0 * mc.weight_bytes, mem_bw=dev.mem_bw,
                                   profile=ctx.profile, kernels=len(linear_shapes(model)))
        for k in ("fwd_gemm", "fwd_attention", "fwd_elementwise"):
            p[k] = mc.forward_passes * p[k]
        p["fwd_elementwise"] = p["fwd_elementwise"] + update
        for k in ("bwd_gemm", "bwd_attention", "bwd_elementwise", "recompute"):
            p[k] = np.zeros_like(np.asarray(p[k], float))
        p["emb"] = mc.forward_passes * emb_fwd
        p["logits"] = mc.forward_passes * log_fwd
        # Two all-reduces per forward, two forwards: the four of a forward-backward (the
        # recomputed forward's two are gone with the backward).
        p["tp_exposed"] = p["tp_exposed"] * 4.0 / (4.0 + np.where(rc == 2, 2.0, 0.0))
        p["cp_exposed"] = np.zeros_like(np.asarray(p["cp_exposed"], float))
        p["act_extra"] = layer_activation_bytes(model, b, s_local, tp, sp, 0, **kw)
        p["act_layer"] = np.zeros_like(np.asarray(p["act_layer"], float))
