"""calc: a tiny calculator library."""

__version__ = "0.1.0"
