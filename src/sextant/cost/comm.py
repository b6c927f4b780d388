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


def ring_all_reduce(bytes_, n, bw, latency) -> np.ndarray:
    n = _f(n)
    return np.where(n > 1, 2 * (n - 1) / n * bytes_ / bw + 2 * (n - 1) * latency, 0.0)


def tree_all_reduce(bytes_, n, bw, latency) -> np.ndarray:
    n = _f(n)
    return np.where(n > 1, 2 * bytes_ / bw + 2 * np.log2(np.maximum(n, 1)) * latency, 0.0)


def ring_all_gather(bytes_, n, bw, latency) -> np.ndarray:
    """Also the time of a reduce-scatter of the same buffer."""
    n = _f(n)
    return np.where(n > 1, (n - 1) / n * bytes_ / bw + (n - 1) * latency, 0.0)


def _split(n, per_node) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of a group in one node (g) and number of nodes it spans (k), for ``per_node``
    group members per node as placed by the rank order."""
    g = np.minimum(_f(n), _f(per_node))
    g = np.maximum(g, 1.0)
    return g, _f(n) / g


def all_reduce(bytes_, n, per_node, fab: Fabric, *, flat: bool | np.ndarray = False) -> np.ndarray:
    """All-reduce over a group of ``n`` ranks with ``per_node`` of them in each node."""
    g, k = _split(n, per_node)
    intra_only = np.minimum(ring_all_reduce(bytes_, g, fab.intra_bw, fab.intra_latency),
                            tree_all_reduce(bytes_, g, fab.intra_bw, fab.intra_latency))
    inter = np.minimum(ring_all_reduce(bytes_ / g, k, fab.inter_bw, fab.inter_latency),
                       tree_all_reduce(bytes_ / g, k, fab.inter_bw, fab.inter_latency))
    hier = 2 * ring_all_gather(bytes_, g, fab.intra_bw, fab.intra_latency) + inter
    flat_t = ring_all_reduce(bytes_, n, np.minimum(fab.intra_bw, fab.inter_bw), fab.inter_latency)
    spanning = np.where(flat, flat_t, hier)
    return np.where(k > 1, spanning, intra_only)


def all_gather(bytes_, n, per_node, fab: Fabric, *, flat: bool | np.ndarray = False) -> np.ndarray:
    """All-gather (or reduce-scatter) of a ``bytes_`` buffer over ``n`` ranks."""
    g, k = _split(n, per_node)
    intra = ring_all_gather(bytes_, g, fab.intra_bw, fab.intra_latency)
    hier = ring_all_gather(bytes_ / g, k, fab.inter_bw, fab.inter_latency) + intra
    flat_t = ring_all_gather(bytes_, n, np.minimum(fab.intra_bw, fab.inter_bw), fab.inter_latency)
    return np.where(k > 1, np.where(flat, flat_t, hier), intra)


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


def p2p(bytes_, crosses_node, fab: Fabric) -> np.ndarray:
    """One point-to-point send between pipeline stages."""
    bw = np.where(crosses_node, fab.inter_bw, fab.intra_bw)
    lat = np.where(crosses_node, fab.inter_latency, fab.intra_latency)
    return bytes_ / bw + lat
