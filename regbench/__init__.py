"""regbench: which regularizer helps which model, with which optimizer, at what cost."""

__version__ = "0.1.0"
