"""Collective communication times: the alpha-beta model of NCCL's ring and tree algorithms.

Ring all-reduce moves 2(n-1)/n of the buffer through each rank's slowest link and takes 2(n-1)
steps; all-gather and reduce-scatter move (n-1)/n in n-1 steps (Thakur, Rabenseifner and Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA 2005; NCCL's bus
bandwidth convention in nccl-tests/doc/PERFORMANCE.md). A double binary tree all-reduce takes
about 2 log2(n) latency steps at the same bandwidth term for large buffers (Sanders, Speck and
Traff 2009; NCCL 2.4); NCCL picks the faster of the two, and so does :func:`all_reduce`.

Groups that span nodes run hierarchically by default, as NCCL does with several rings per node
(one per NIC): an intra-node reduce-scatter, the inter-node collective on 1/g of the buffer over
the g NICs of the group's GPUs in the node, then an intra-node all-gather. ``flat_ring`` instead
bounds the whole ring by one rank's NIC, for frameworks that run one ring over a flat group.

``bytes_`` is always the size of the full buffer each rank ends with (all-reduce, all-gather)
or starts with (reduce-scatter). Everything broadcasts over NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.spec.hardware import ClusterSpec
from sextant.spec.profile import HardwareProfile


@dataclass(frozen=True)
class Fabric:
    """Achievable bandwidths (bytes/s, per GPU, per direction) and per-step latencies."""

    intra_bw: float
    intra_latency: float
    inter_bw: float  # per GPU: the node's NICs shared by its GPUs
    inter_latency: float
    gpus_per_node: int

    @classmethod
    def of(cls, cluster: ClusterSpec, profile: HardwareProfile) -> Fabric:
        node = cluster.node
        return cls(
            intra_bw=node.intra_node_link.bandwidth_bytes_per_s * profile.intra_node_bw_efficiency,
            intra_latency=node.intra_node_link.latency_s,
            inter_bw=node.network_bytes_per_s_per_gpu * profile.network_bw_efficiency,
            inter_latency=node.nic.latency_s,
            gpus_per_node=cluster.gpus_per_node,
        )


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


@dataclass(frozen=True)
class Collective:
    """Time of one collective on one group as a function of the buffer size: the minimum over
    algorithms of ``bytes * per_byte + fixed``. Build it once per group, apply it to many sizes
    (the planner evaluates millions of groups; the algorithms are affine in the size)."""

    terms: tuple[tuple[np.ndarray, np.ndarray], ...]
    active: np.ndarray  # False where the group has one rank: no communication

    def __call__(self, bytes_) -> np.ndarray:
        times = [bytes_ * a + c for a, c in self.terms]
        t = times[0] if len(times) == 1 else np.minimum(*times) if len(times) == 2 else np.min(times, axis=0)
        return np.where(self.active, t, 0.0)


def _ring_ar(n, bw, latency):
    """(per_byte, fixed) of a ring all-reduce over n ranks."""
    return 2 * (n - 1) / n / bw, 2 * (n - 1) * latency


def _tree_ar(n, bw, latency):
    """(per_byte, fixed) of a double-binary-tree all-reduce over n ranks."""
    return 2 / bw + 0 * n, 2 * np.log2(np.maximum(n, 1)) * latency


def _ring_ag(n, bw, latency):
    """(per_byte, fixed) of a ring all-gather / reduce-scatter over n ranks."""
    return (n - 1) / n / bw, (n - 1) * latency


def ring_all_reduce(bytes_, n, bw, latency) -> np.ndarray:
    n = _f(n)
    a, c = _ring_ar(n, bw, latency)
    return np.where(n > 1, bytes_ * a + c, 0.0)


def tree_all_reduce(bytes_, n, bw, latency) -> np.ndarray:
    n = _f(n)
    a, c = _tree_ar(n, bw, latency)
    return np.where(n > 1, bytes_ * a + c, 0.0)


def ring_all_gather(bytes_, n, bw, latency) -> np.ndarray:
    """Also the time of a reduce-scatter of the same buffer."""
    n = _f(n)
    a, c = _ring_ag(n, bw, latency)
    return np.where(n > 1, bytes_ * a + c, 0.0)


def _split(n, per_node) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of a group in one node (g) and number of nodes it spans (k), for ``per_node``
    group members per node as placed by the rank order."""
    g = np.maximum(np.minimum(_f(n), _f(per_node)), 1.0)
    return g, _f(n) / g


def _combine(spans, inside, across):
    """Per-row choice between the intra-node and the spanning terms (same algorithm order)."""
    return tuple((np.where(spans, a2, a1), np.where(spans, c2, c1)) for (a1, c1), (a2, c2) in zip(inside, across))


def all_reduce_cost(n, per_node, fab: Fabric, *, flat: bool = False) -> Collective:
    """All-reduce over groups of ``n`` ranks with ``per_node`` of them in each node."""
    n = _f(n)
    g, k = _split(n, per_node)
    inside = (_ring_ar(g, fab.intra_bw, fab.intra_latency), _tree_ar(g, fab.intra_bw, fab.intra_latency))
    if flat:
        bw = min(fab.intra_bw, fab.inter_bw)
        across = (_ring_ar(n, bw, fab.inter_latency), _tree_ar(n, bw, fab.inter_latency))
    else:
        # Hierarchical: intra reduce-scatter + inter all-reduce of bytes/g + intra all-gather.
        a_in, c_in = _ring_ag(g, fab.intra_bw, fab.intra_latency)
        across = tuple((2 * a_in + a / g, 2 * c_in + c) for a, c in (
            _ring_ar(k, fab.inter_bw, fab.inter_latency), _tree_ar(k, fab.inter_bw, fab.inter_latency)))
    return Collective(terms=_combine(k > 1, inside, across), active=n > 1)


def all_gather_cost(n, per_node, fab: Fabric, *, flat: bool = False) -> Collective:
    """All-gather (or reduce-scatter) over groups of ``n`` ranks with ``per_node`` per node."""
    n = _f(n)
    g, k = _split(n, per_node)
    inside = (_ring_ag(g, fab.intra_bw, fab.intra_latency),)
    if flat:
        across = (_ring_ag(n, min(fab.intra_bw, fab.inter_bw), fab.inter_latency),)
    else:
        a_in, c_in = _ring_ag(g, fab.intra_bw, fab.intra_latency)
        a_out, c_out = _ring_ag(k, fab.inter_bw, fab.inter_latency)
        across = ((a_in + a_out / g, c_in + c_out),)
    return Collective(terms=_combine(k > 1, inside, across), active=n > 1)


def all_reduce(bytes_, n, per_node, fab: Fabric, *, flat: bool = False) -> np.ndarray:
    """All-reduce of a ``bytes_`` buffer over ``n`` ranks, ``per_node`` of them per node."""
    return all_reduce_cost(n, per_node, fab, flat=flat)(bytes_)


def all_gather(bytes_, n, per_node, fab: Fabric, *, flat: bool = False) -> np.ndarray:
    """All-gather (or reduce-scatter) of a ``bytes_`` buffer over ``n`` ranks."""
    return all_gather_cost(n, per_node, fab, flat=flat)(bytes_)


def all_to_all(bytes_, n, per_node, fab: Fabric) -> np.ndarray:
    """All-to-all where each rank sends ``bytes_`` in total, spread evenly over the group.

    The share for ranks in other nodes leaves through the rank's share of the NICs; the rest
    crosses the intra-node fabric. Pairwise exchange: n-1 latency steps.
    """
    n_ = _f(n)
    g, k = _split(n, per_node)
    remote = bytes_ * (n_ - g) / np.maximum(n_, 1)
    local = bytes_ * (g - 1) / np.maximum(n_, 1)
    t = np.maximum(remote / fab.inter_bw, local / fab.intra_bw)
    lat = np.where(k > 1, fab.inter_latency, fab.intra_latency) * (n_ - 1)
    return np.where(n_ > 1, t + lat, 0.0)


def node_deduplicated_all_to_all(bytes_, n, per_node, fab: Fabric, remote_share) -> np.ndarray:
    """The all-to-all of :func:`all_to_all` as DeepEP's internode kernels (and Megatron-Core's
    HybridEP) run an expert dispatch: a token bound for several GPUs of one remote node crosses
    the network once, to the GPU of the same local index there, which forwards it over NVLink
    (DeepSeek-V3 technical report, section 3.2.2; deepseek-ai/DeepEP). ``remote_share``: the
    fraction of the plain all-to-all's network bytes that remains; every copy still crosses
    NVLink once."""
    n_ = _f(n)
    g, k = _split(n, per_node)
    remote = bytes_ * (n_ - g) / np.maximum(n_, 1) * remote_share
    local = bytes_ * (n_ - 1) / np.maximum(n_, 1)
    t = np.maximum(remote / fab.inter_bw, local / fab.intra_bw)
    lat = np.where(k > 1, fab.inter_latency, fab.intra_latency) * (n_ - 1)
    return np.where(n_ > 1, t + lat, 0.0)


def p2p(bytes_, crosses_node, fab: Fabric) -> np.ndarray:
    """One point-to-point send between pipeline stages."""
    bw = np.where(crosses_node, fab.inter_bw, fab.intra_bw)
    lat = np.where(crosses_node, fab.inter_latency, fab.intra_latency)
    return bytes_ / bw + lat


def exposed(comm_s, window_s, efficiency: float) -> np.ndarray:
    """Communication time left visible when it overlaps ``window_s`` of compute: a fraction
    ``efficiency`` of the overlappable part (the shorter of the two) is hidden; 1 is perfect
    overlap, less models streams contending for SMs and memory, and prefetches that start late."""
    return comm_s - efficiency * np.minimum(comm_s, window_s)


def group_per_node(size, stride, gpus_per_node) -> np.ndarray:
    """Members of a process group in one node, for groups whose ranks are ``stride`` apart
    (Megatron-LM's rank order tp, cp, ep/dp, pp: tp varies fastest)."""
    return np.maximum(1.0, np.minimum(np.asarray(size, float), gpus_per_node / np.asarray(stride, float)))
