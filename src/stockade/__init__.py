"""Stockade: an API security gateway and toolkit."""

__version__ = "0.1.0"
