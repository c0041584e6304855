"""Train state, pure train/eval steps, optimizer, checkpointing and the loop."""
