"""Training: partitioning, optimizers, train state, step functions, checkpoints, metrics,
multi-host start-up, the trainer class, and the gin-configured train job."""
