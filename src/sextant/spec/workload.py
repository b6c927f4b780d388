"""What is trained: batch, sequence length, optimizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sextant.spec.base import Spec
from sextant.spec.limits import MAX_GLOBAL_BATCH, MAX_HIDDEN_SIZE, MAX_SEQUENCE_TOKENS

Optimizer = Literal["adamw", "adam", "sgd", "adam8bit"]
#: Full-parameter training, or a memory-saving method (cost/finetune.py).
Method = Literal["full", "lora", "qlora", "galore", "zo"]


class TrainWorkload(Spec):
    """``global_batch`` counts sequences of ``seq_len`` tokens per optimizer step."""

    global_batch: int = Field(default=128, gt=0, le=MAX_GLOBAL_BATCH)
    seq_len: int = Field(default=4096, gt=0, le=MAX_SEQUENCE_TOKENS)
    optimizer: Optimizer = "adamw"
    #: Tokens the busiest expert-parallel rank receives, as a multiple of the mean (MoE only).
    #: DeepSeek-V3 and Mixtral report near-balanced routing with auxiliary losses; 1.2 by default.
    expert_imbalance: float = Field(default=1.2, ge=1.0, le=16.0)
    #: Dropout on attention scores and residual branches (GPT-3-era recipes; Llama trains without).
    dropout: bool = False
    #: What is trained and how (cost/finetune.py): all parameters with the optimizer; LoRA or
    #: QLoRA adapters of rank ``adapter_rank`` on every linear layer; GaLore with projection rank
    #: ``adapter_rank``; or zeroth-order SGD (MeZO/ZO2: forward passes only).
    method: Method = "full"
    adapter_rank: int = Field(default=64, gt=0, le=MAX_HIDDEN_SIZE)
