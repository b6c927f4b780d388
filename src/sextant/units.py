"""Unit constants. Sextant computes in SI base units (seconds, bytes, FLOP, FLOP/s, bytes/s);
these constants convert at the edges only (catalog data in, reports out).

Memory capacities of GPUs are binary: an "80 GB" A100 or H100 holds 80 GiB of HBM. Reports give
memory in GiB for that reason, and rates (bandwidths, FLOP/s) in decimal units, as datasheets do.
"""

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 2.0**10
MiB = 2.0**20
GiB = 2.0**30
TiB = 2.0**40

TFLOPS = 1e12
PFLOPS = 1e15

#: Network line rates are quoted in bits per second.
Gbps = 1e9 / 8.0

MICROSECOND = 1e-6
MILLISECOND = 1e-3
