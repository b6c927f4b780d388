"""The state of every request of a simulation, shared by its engines."""

from __future__ import annotations

from dataclasses import dataclass, field

WAITING, PREFILLING, DECODING, SWAPPED, DONE = range(5)


@dataclass
class RequestTable:
    """Per-request state shared by every engine of a simulation (plain lists: scalar access in
    the event loop is faster than NumPy's)."""

    arrival: list[float]
    inp: list[int]
    out: list[int]
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    gen: list[int] = field(default_factory=list)  # tokens generated so far (at the last event)
    target: list[int] = field(default_factory=list)  # tokens the next prefill must process
    done: list[int] = field(default_factory=list)  # of which prefilled so far (chunked)
    held: list[int] = field(default_factory=list)  # KV blocks held outside the decode accounting
    c0: list[int] = field(default_factory=list)
    d0: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    #: Shared-prefix group of each request (-1: none) and the prefix's length in tokens.
    group: list[int] = field(default_factory=list)
    prefix_tokens: int = 0
    #: Which repeated whole prompt each request sends (-1: a prompt of its own).
    prompt: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)  # KV blocks reused from the prefix cache
    preemptions: int = 0

    def __post_init__(self) -> None:
        n = len(self.arrival)
        self.first = [-1.0] * n
        self.finish = [-1.0] * n
        self.state = [WAITING] * n
        self.gen = [0] * n
        self.target = list(self.inp)
        self.done = [0] * n
        self.held = [0] * n
        self.c0 = [0] * n
        self.d0 = [0] * n
        self.epoch = [0] * n
        self.group = list(self.group) if self.group else [-1] * n
        self.prompt = list(self.prompt) if self.prompt else [-1] * n
        self.shared = [0] * n
