"""The one cost model. Every formula for FLOPs, bytes, time and memory lives here, and nothing
in this package imports from train/, plan/, serve/, validate/, report/ or the CLI.

Functions take the strategy as NumPy arrays (or plain numbers, which broadcast the same way), so
the planner evaluates a whole search space with the very functions ``predict`` uses.
"""
