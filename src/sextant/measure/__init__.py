"""Real runs of a small Llama-style model with PyTorch, compared with predictions (needs PyTorch)."""
