"""evalmem: fast measurement of training-data memorization across the knowledge-distillation pipeline."""

__version__ = "0.1.0"
