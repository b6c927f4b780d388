"""A Llama-style decoder in plain PyTorch, built from a :class:`ModelSpec`.

RMSNorm, rotary position embeddings, grouped-query attention through
``scaled_dot_product_attention`` (causal, GQA without materialized key/value repeats), SwiGLU
MLP, untied output projection. The norm and the SwiGLU product are small autograd functions that
keep exactly what fused kernels keep for backward (the norm's input and its per-row scale; the
gate and up projections), as Apex/Transformer Engine RMSNorm and Megatron-LM's fused SwiGLU do:
eager PyTorch would keep one more tensor for each, and the cost model describes the fused
frameworks people train with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sextant.spec.model import ModelSpec


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm that keeps its input and per-row scale for backward, as fused kernels do."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return x * rstd * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        normed = x * rstd
        grad_weight = (grad * normed).reshape(-1, x.shape[-1]).sum(0)
        g = grad * weight
        grad_x = rstd * (g - normed * (g * normed).mean(-1, keepdim=True))
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return RMSNormFunction.apply(x, self.weight, self.eps)


class SwiGLUFunction(torch.autograd.Function):
    """silu(gate) * up keeping only the gate and up projections for backward (Megatron-LM's
    fused SwiGLU)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


def rotary_tables(head_dim: int, max_len: int, theta: float = 10000.0, device=None):
    """Complex rotations e^{i * pos * theta^(-2j/d)}, (max_len, head_dim / 2)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, device=device, dtype=torch.float32), inv)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x, rotations):
    """x: (batch, seq, heads, head_dim), adjacent pairs rotated as complex numbers (the original
    Llama layout); one complex multiply forward and one backward."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations[:, None, :]).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        h = spec.hidden_size
        self.wq = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x, rotations, cache=None, pos: int = 0):
        b, s, _ = x.shape
        q = apply_rotary(self.wq(x).view(b, s, self.heads, self.head_dim), rotations)
        k = apply_rotary(self.wk(x).view(b, s, self.kv_heads, self.head_dim), rotations)
        v = self.wv(x).view(b, s, self.kv_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # preallocated (batch, kv_heads, max_len, head_dim) buffers
            k_cache, v_cache = cache
            k_cache[:, :, pos:pos + s] = k
            v_cache[:, :, pos:pos + s] = v
            k, v = k_cache[:, :, :pos + s], v_cache[:, :, :pos + s]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=(s > 1), enable_gqa=self.kv_heads != self.heads)
        return self.wo(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, f = spec.hidden_size, spec.ffn_hidden_size
        self.w1 = nn.Linear(h, f, bias=False)
        self.w3 = nn.Linear(h, f, bias=False)
        self.w2 = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.w2(SwiGLUFunction.apply(self.w1(x), self.w3(x)))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size)
        self.attn = Attention(spec)
        self.mlp_norm = RMSNorm(spec.hidden_size)
        self.mlp = MLP(spec)

    def forward(self, x, rotations, cache=None, pos: int = 0):
        x = x + self.attn(self.attn_norm(x), rotations, cache, pos)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.mlp != "swiglu" or spec.norm != "rmsnorm" or spec.position_embedding != "rope" or spec.is_moe \
                or spec.mla is not None or spec.tie_embeddings or spec.linear_bias or spec.qkv_bias:
            raise ValueError(f"{spec.name}: the measured model is a dense Llama-style decoder (RMSNorm, RoPE, "
                             "SwiGLU, untied embeddings, no biases)")
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size)
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.register_buffer("rotations", rotary_tables(spec.head_dim, spec.max_seq_len), persistent=False)

    def forward(self, tokens, cache=None, pos: int = 0, last_only: bool = False):
        s = tokens.shape[1]
        rotations = self.rotations[pos:pos + s]
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, rotations, None if cache is None else cache[i], pos)
        x = self.norm(x[:, -1:] if last_only else x)
        return self.output(x).float()
