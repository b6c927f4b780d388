"""The planner: enumerate whole strategy spaces, evaluate them with the training cost model in
vectorised NumPy, keep what fits, rank, and explain the choice."""
