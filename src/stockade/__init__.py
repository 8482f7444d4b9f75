"""Stockade: an API security gateway and toolkit."""

from stockade import native

__version__ = "0.1.0"

native.activate()  # before any module of the request path is imported: the compiled ones if they are current
