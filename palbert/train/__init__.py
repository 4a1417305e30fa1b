"""Training: the loop, its checkpoints, task sampling, index streams, losses and the LR schedule."""
