"""Built-in hardware and models, each entry with its source."""

from sextant.catalog.hardware import (
    build_cluster,
    get_gpu,
    get_network,
    get_node,
    get_profile,
    gpu_names,
    network_names,
    node_names,
)
from sextant.catalog.models import get_model, model_names

__all__ = [
    "build_cluster",
    "get_gpu",
    "get_model",
    "get_network",
    "get_node",
    "get_profile",
    "gpu_names",
    "model_names",
    "network_names",
    "node_names",
]
