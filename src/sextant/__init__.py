"""Sextant: predict how large models train and serve on given hardware.

The package is layered from the bottom up (see docs/architecture.md):
spec (plain data) <- catalog, cost <- train <- validate, report <- cli.
"""

__version__ = "0.1.0"
