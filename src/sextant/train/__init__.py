"""Training step model: assembles the cost functions into a step time, memory and breakdown."""
