"""The reference Llama-style decoder in PyTorch (an optional extra): what ``sextant measure`` runs
and what ``sextant calibrate`` times its layer-level probes on."""
