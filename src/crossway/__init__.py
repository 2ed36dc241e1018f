"""Crossway: a microservice platform for Python."""

__version__ = "0.1.0"

__all__ = ["__version__"]
