"""FLOPs and parameter accounting, compute-optimal planning."""
