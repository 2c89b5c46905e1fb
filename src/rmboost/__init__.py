"""rmboost: better reward models from synthetic preference data."""

__version__ = "0.1.0"
