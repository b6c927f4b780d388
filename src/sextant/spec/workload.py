"""What is trained: batch, sequence length, optimizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sextant.spec.base import Spec

Optimizer = Literal["adamw", "adam", "sgd", "adam8bit"]


class TrainWorkload(Spec):
    """``global_batch`` counts sequences of ``seq_len`` tokens per optimizer step."""

    global_batch: int = Field(default=128, gt=0)
    seq_len: int = Field(default=4096, gt=0)
    optimizer: Optimizer = "adamw"
    #: Dropout on attention scores and residual branches (GPT-3-era recipes; Llama trains without).
    dropout: bool = False
