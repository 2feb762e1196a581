"""Autopack: autonomous, budgeted, audited software builds."""

__version__ = "0.1.0"
