"""Training: modes, the meta-learning trainer and the run-folder worker."""
