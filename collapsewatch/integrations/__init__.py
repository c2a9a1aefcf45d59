"""Adapters for training frameworks, each an optional extra: `lightning` (a Lightning callback) and
`transformers` (a `compute_loss_func` wrapper for `transformers.Trainer`). Import the submodule you need."""
