"""Offline training: per-view samples, the trainer, checkpoints."""
