"""The largest quantities Sextant accepts, in one place.

Each bound sits far above anything built or published (so no real run is refused) and below what
would make a prediction run out of time or memory, or overflow an integer: a value beyond one is
a one-line error naming the bound, never a hang. The specs enforce them where each field is
declared; docs/scenario-keys.md (generated from the specs) shows each bound beside its key.
"""

from __future__ import annotations

#: GPUs in one training job: 2^20, five times the largest cluster announced by 2026 (~200k).
MAX_GPUS = 1 << 20
#: GPUs a serving simulation models replica by replica (each replica is an engine of its own).
MAX_SERVING_GPUS = 1 << 16
#: Transformer layers: 1,024 (the deepest published LLMs have about 130).
MAX_LAYERS = 1 << 10
#: Tokens in one sequence (training) or one request (prompt + output): 2^24 = 16.8M, above the
#: longest context any model declares (Llama 4 Scout: 10M).
MAX_SEQUENCE_TOKENS = 1 << 24
#: Sequences per optimizer step: 2^32.
MAX_GLOBAL_BATCH = 1 << 32
#: Hidden size, MLP width, vocabulary, attention heads and experts.
MAX_HIDDEN_SIZE = 1 << 20
MAX_FFN_HIDDEN_SIZE = 1 << 22
MAX_VOCAB_SIZE = 1 << 24
MAX_HEADS = 1 << 14
MAX_EXPERTS = 1 << 16
#: Ranked results a plan lists and explains (each is a full prediction with its breakdown).
MAX_TOP = 100
#: Memory sizes given in GiB (a GPU's usable memory, swap space, runtime reserves): 1 PiB.
MAX_MEMORY_GIB = float(1 << 20)
#: Engine CPU work per serving iteration: one second (engines spend 1 to 30 ms).
MAX_ITERATION_OVERHEAD_MS = 1000.0
#: Parallel layouts (dp x tp x pp x cp, and ep x etp for MoE) a training plan builds for one GPU
#: count before its rules filter them (2^20: about a second and 50 MB; the rest of the space is
#: crossed only with the layouts that can run, in bounded chunks), and over all GPU counts (2^22).
MAX_SEARCH_LAYOUTS_PER_COUNT = 1 << 20
MAX_SEARCH_LAYOUTS = 1 << 22
