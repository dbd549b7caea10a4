"""Distributed training: the training loop, its learning-rate schedule, run directories, the plan preview and the CLI."""
