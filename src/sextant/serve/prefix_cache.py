"""An engine's prefix cache: the KV blocks of shared prompt prefixes and repeated prompts, kept
after their requests end and reused by the next requests that share them.

vLLM's automatic prefix caching hashes full KV blocks (a block's hash covers every token before
it), so a request reuses the full blocks of the longest cached prefix of its prompt; the last
prompt token is always computed again to sample from (vllm/v1/core/kv_cache_manager.py). Cached
blocks no request holds sit in the free block queue, handed out last: they count as free, and an
allocation that needs them evicts their hashes, least recently used first. SGLang's RadixAttention
reuses prefixes the same way at token granularity (one-token pages).

The workload states what is shared (serve/requests.py): a group's prefix of ``prefix_tokens``
tokens, and optionally whole prompts that repeat. Entries here are ("group", g) with the prefix's
full blocks and ("prompt", p) with the rest of the prompt's full blocks; dropping a group drops its
prompts, whose blocks hang off the prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class _Requests(Protocol):
    inp: list[int]
    group: list[int]
    prompt: list[int]
    prefix_tokens: int


class PrefixCache:
    """The prefix-cache entries of one engine, least recently used first, with their blocks."""

    def __init__(self, req: _Requests, block_size: int, enabled: bool) -> None:
        self.req, self.block_size, self.enabled = req, block_size, enabled
        self.entries: OrderedDict[tuple[str, int], int] = OrderedDict()
        self.blocks = 0
        self._group_of_prompt: dict[int, int] = {}

    def hit(self, rid: int) -> int:
        """Prompt tokens of request ``rid`` whose KV blocks are cached, in full blocks: all but
        the last token of a whole prompt seen before, else its group's shared prefix."""
        r, b = self.req, self.block_size
        if not self.enabled or r.group[rid] < 0:
            return 0
        group = ("group", r.group[rid])
        if group not in self.entries:
            return 0
        self.entries.move_to_end(group)
        prompt = ("prompt", r.prompt[rid])
        if prompt in self.entries:
            self.entries.move_to_end(prompt)
            return (r.inp[rid] - 1) // b * b
        return r.prefix_tokens // b * b

    def add(self, rid: int) -> None:
        """After request ``rid``'s prefill: its group's prefix and its whole prompt (if prompts
        repeat) stay cached."""
        r, b = self.req, self.block_size
        if not self.enabled or r.group[rid] < 0:
            return
        prefix_blocks = r.prefix_tokens // b
        group = ("group", r.group[rid])
        if group not in self.entries:
            self.entries[group] = prefix_blocks
            self.blocks += prefix_blocks
        p = r.prompt[rid]
        if p >= 0 and ("prompt", p) not in self.entries:
            blocks = r.inp[rid] // b - prefix_blocks
            self.entries[("prompt", p)] = blocks
            self.blocks += blocks
            self._group_of_prompt[p] = r.group[rid]

    def shrink_to(self, free_blocks: int) -> None:
        """Evict (LRU) until the cached blocks fit in the engine's free blocks."""
        while self.blocks > max(free_blocks, 0):
            (kind, key), blocks = self.entries.popitem(last=False)
            self.blocks -= blocks
            if kind == "group":
                for entry in [e for e in self.entries if e[0] == "prompt" and self._group_of_prompt[e[1]] == key]:
                    self.blocks -= self.entries.pop(entry)
