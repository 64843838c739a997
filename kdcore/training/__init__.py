"""The trainer: stages, batches, evaluation, checkpoints."""
