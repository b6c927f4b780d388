"""On-demand cloud list prices per GPU-hour (``data/prices.yaml``), each with its provider,
offering, date and source: what ``plan serve --rate`` and ``plan train --tokens`` cost a plan with
when the user names no price (``--price GPU=DOLLARS``, ``--price-per-gpu-hour``). List prices
change (AWS cut its P4 and P5 on-demand prices by up to 45% in June 2025), so each carries the
date its source gives; the reports say which price they used."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sextant.catalog._loader import load_yaml


class GpuPrice(BaseModel):
    gpu: str
    dollars_per_gpu_hour: float = Field(gt=0)
    provider: str
    offering: str
    as_of: str
    source: str
    note: str = ""

    @property
    def label(self) -> str:
        """Where the price comes from, in a few words: ``AWS p5.48xlarge on demand, as of 2026-11-09``."""
        return f"{self.provider} {self.offering.split(' ')[0]} on demand, as of {self.as_of}"


def _table() -> dict[str, dict]:
    return load_yaml("prices.yaml")["gpus"]


def gpu_price(gpu: str) -> GpuPrice | None:
    """The catalog's list price of one GPU type, or None where it has none."""
    entry = _table().get(gpu.strip().lower())
    if entry is None:
        return None
    keys = ("dollars_per_gpu_hour", "provider", "offering", "as_of", "source", "note")
    return GpuPrice(gpu=gpu.strip().lower(), **{k: entry[k] for k in keys if k in entry})


def priced_gpus() -> list[str]:
    return sorted(_table())
