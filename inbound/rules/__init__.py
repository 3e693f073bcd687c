"""Rule sets: the model, loading with positions, the recipient index, and evaluation."""
