"""Microbenchmarks on the local device and the profile fitted from them (needs PyTorch)."""
