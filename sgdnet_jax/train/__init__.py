"""Training: losses, optimiser, sharded state, checkpoints and the loop (`train_and_evaluate`)."""
