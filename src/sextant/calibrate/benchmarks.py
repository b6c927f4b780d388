"""Microbenchmarks with PyTorch on the local device. Each returns plain records (dicts).

What is measured, and how it maps to the cost model:

* ``gemm``: ``torch.matmul`` of (m x k) @ (k x n) per dtype over a shape grid -> GEMM efficiency.
* ``attention``: ``scaled_dot_product_attention`` (causal) forward, and forward + backward ->
  fused-attention efficiency, with the cost model's FLOP convention (causal half, backward 2.5x).
* ``elementwise``: ``torch.add(a, b, out=c)`` over sizes -> memory bandwidth and per-op overhead;
  a one-element add -> the fixed cost of one eager operation (launch plus dispatch).
* ``copies``: host-to-device and device-to-host, pinned and pageable (CUDA only).
* ``disk``: sequential write (fsync'd) and read of a scratch file (page cache dropped where the
  OS allows; the record says whether it was).
* ``optimizer``: ``torch.optim.AdamW`` steps on the CPU (``foreach``) and on the device.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sextant.calibrate.timing import median_seconds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm(device: str, dtype: str, shapes: Sequence[tuple[int, int, int]], tick: Callable[[str], None],
         budget_s: float) -> list[dict]:
    records = []
    dt = DTYPES[dtype]
    for m, n, k in shapes:
        a = torch.randn(m, k, device=device, dtype=dt)
        b = torch.randn(k, n, device=device, dtype=dt)
        seconds = median_seconds(lambda a=a, b=b: torch.matmul(a, b), device, budget_s=budget_s)
        records.append({"dtype": dtype, "m": m, "n": n, "k": k, "seconds": seconds,
                        "flops_per_s": 2.0 * m * n * k / seconds})
        tick(f"gemm {dtype} {m}x{n}x{k}")
    return records


def attention(device: str, dtype: str, shapes: Sequence[tuple[int, int, int, int]], tick: Callable[[str], None],
              budget_s: float) -> list[dict]:
    """Causal SDPA; shapes are (batch, heads, seq, head_dim)."""
    records = []
    dt = DTYPES[dtype]
    for b, h, s, d in shapes:
        q, k, v = (torch.randn(b, h, s, d, device=device, dtype=dt, requires_grad=True) for _ in range(3))
        grad = torch.randn(b, h, s, d, device=device, dtype=dt)

        def forward(q=q, k=k, v=v):
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def forward_backward(q=q, k=k, v=v, grad=grad):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(grad)
            q.grad = k.grad = v.grad = None

        fwd = median_seconds(forward, device, budget_s=budget_s)
        both = median_seconds(forward_backward, device, budget_s=budget_s)
        records.append({"dtype": dtype, "batch": b, "heads": h, "seq": s, "head_dim": d,
                        "forward_s": fwd, "forward_backward_s": both})
        tick(f"attention {dtype} b{b} h{h} s{s} d{d}")
    return records


def elementwise(device: str, sizes: Sequence[int], tick: Callable[[str], None], budget_s: float) -> list[dict]:
    """fp32 ``c = a + b``: 12 bytes moved per element."""
    records = []
    for n in sizes:
        a, b, c = (torch.empty(n, device=device).uniform_() for _ in range(3))
        seconds = median_seconds(lambda a=a, b=b, c=c: torch.add(a, b, out=c), device, budget_s=budget_s)
        records.append({"elements": n, "bytes": 12.0 * n, "seconds": seconds})
        tick(f"elementwise {n:,} elements")
    return records


def op_overhead(device: str, budget_s: float) -> dict[str, float]:
    """Seconds of one operation on tiny tensors, as a model issues it: an ``nn.Linear`` call
    (module call, dispatch, launch), a bare ``torch.add``, and an attention call."""
    lin = torch.nn.Linear(16, 16, device=device)
    x = torch.randn(1, 16, device=device)
    a = torch.ones(1, device=device)
    q, k = torch.randn(1, 8, 1, 32, device=device), torch.randn(1, 8, 16, 32, device=device)
    runs = 100
    ops = {"linear_call_s": lambda: lin(x), "add_s": lambda: torch.add(a, a),
           "attention_call_s": lambda: F.scaled_dot_product_attention(q, k, k)}
    result = {}
    with torch.no_grad():
        for name, op in ops.items():
            def many(op=op):
                for _ in range(runs):
                    op()
            result[name] = median_seconds(many, device, budget_s=budget_s) / runs
    return result


def layer_elementwise(device: str, dtype: str, tokens: int, budget_s: float) -> dict:
    """The element-wise work of one reference decoder layer (``sextant.reference.model``), forward
    and backward: two RMSNorms, two residual adds, rotary embedding of queries and keys, the
    SwiGLU product. The GEMMs and attention are left out (they are measured on their own)."""
    from sextant.reference.model import RMSNorm, SwiGLUFunction, apply_rotary, rotary_tables

    h, heads, kv_heads, d, f = 1024, 16, 8, 64, 2816
    dt = DTYPES[dtype]
    norms = [RMSNorm(h).to(device=device, dtype=dt) for _ in range(2)]
    rotations = rotary_tables(d, tokens, device=device)
    x = torch.randn(1, tokens, h, device=device, dtype=dt, requires_grad=True)
    q = torch.randn(1, tokens, heads, d, device=device, dtype=dt, requires_grad=True)
    k = torch.randn(1, tokens, kv_heads, d, device=device, dtype=dt, requires_grad=True)
    gate, up = (torch.randn(1, tokens, f, device=device, dtype=dt, requires_grad=True) for _ in range(2))

    def run():
        y = x + norms[0](x)
        y = y + norms[1](y)
        out = (y.sum() + apply_rotary(q, rotations).sum() + apply_rotary(k, rotations).sum()
               + SwiGLUFunction.apply(gate, up).sum())
        out.backward()
        for t in (x, q, k, gate, up):
            t.grad = None

    seconds = median_seconds(run, device, budget_s=budget_s)
    return {"dtype": dtype, "tokens": tokens, "hidden": h, "heads": heads, "kv_heads": kv_heads, "head_dim": d,
            "ffn": f, "seconds": seconds}


def cross_entropy(device: str, tokens: int, vocab: int, budget_s: float) -> dict:
    """``F.cross_entropy`` forward and backward over fp32 logits (tokens x vocab)."""
    logits = torch.randn(tokens, vocab, device=device, requires_grad=True)
    target = torch.randint(0, vocab, (tokens,), device=device)

    def run():
        F.cross_entropy(logits, target).backward()
        logits.grad = None

    return {"tokens": tokens, "vocab": vocab, "seconds": median_seconds(run, device, budget_s=budget_s)}


def layer_overhead(device: str, budget_s: float) -> float:
    """Seconds to run one reference decoder layer (``sextant.reference.model.Block``) forward on a
    one-token input with a KV cache, where the kernels do almost nothing: the host's cost of
    issuing a layer in eager PyTorch."""
    from sextant.reference.model import Block, rotary_tables
    from sextant.spec.model import ModelSpec

    spec = ModelSpec(name="overhead-probe", source="calibration probe", hidden_size=64, num_layers=1, num_heads=4,
                     num_kv_heads=2, head_dim=16, ffn_hidden_size=128, vocab_size=128, max_seq_len=64)
    block = Block(spec).to(device)
    rotations = rotary_tables(spec.head_dim, spec.max_seq_len, device=device)
    x = torch.randn(1, 1, spec.hidden_size, device=device)
    cache = tuple(torch.zeros(1, spec.num_kv_heads, spec.max_seq_len, spec.head_dim, device=device) for _ in range(2))
    with torch.inference_mode():
        return median_seconds(lambda: block(x, rotations[8:9], cache, 8), device, budget_s=budget_s, warmup=3)


def copies(device: str, sizes: Sequence[int], tick: Callable[[str], None], budget_s: float) -> list[dict]:
    records = []
    for n_bytes in sizes:
        gpu = torch.empty(n_bytes, dtype=torch.uint8, device=device)
        for pinned in (True, False):
            host = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=pinned)
            h2d = median_seconds(lambda g=gpu, h=host: g.copy_(h, non_blocking=True), device, budget_s=budget_s)
            d2h = median_seconds(lambda g=gpu, h=host: h.copy_(g, non_blocking=True), device, budget_s=budget_s)
            records.append({"bytes": n_bytes, "pinned": pinned, "h2d_s": h2d, "d2h_s": d2h})
        tick(f"copies {n_bytes / 2**20:.0f} MiB")
    return records


def disk(directory: str | None, n_bytes: int, tick: Callable[[str], None]) -> dict:
    """Sequential write then read of one scratch file, 8 MiB blocks."""
    block = os.urandom(8 * 2**20)
    blocks = max(1, n_bytes // len(block))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, "sextant-disk-bench")
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(blocks):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - start
        cache_dropped = False
        with open(path, "rb") as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                cache_dropped = True
            start = time.perf_counter()
            while f.read(len(block)):
                pass
            read_s = time.perf_counter() - start
        total = blocks * len(block)
    tick("disk")
    return {"directory": directory or tempfile.gettempdir(), "bytes": total, "write_s": write_s, "read_s": read_s,
            "write_bytes_per_s": total / write_s, "read_bytes_per_s": total / read_s,
            "page_cache_dropped": cache_dropped}


def optimizer(device: str, params: int, tick: Callable[[str], None], budget_s: float) -> dict:
    """AdamW steps over ``params`` fp32 parameters in 16 tensors, with gradients present."""
    tensors = [torch.zeros(params // 16, device=device, requires_grad=True) for _ in range(16)]
    for t in tensors:
        t.grad = torch.randn_like(t)
    kwargs = {"fused": True} if device.startswith("cuda") else {"foreach": True}
    opt = torch.optim.AdamW(tensors, lr=1e-4, **kwargs)
    seconds = median_seconds(opt.step, device, budget_s=budget_s, warmup=2)
    total = sum(t.numel() for t in tensors)
    tick(f"optimizer on {device}")
    return {"device": device, "params": total, "seconds": seconds, "params_per_s": total / seconds,
            "implementation": "torch.optim.AdamW " + next(iter(kwargs))}
