"""Distributed training: sharding, checkpoints, the training loop and its CLI."""
