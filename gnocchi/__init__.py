"""gnocchi: single-packet port knocking."""
__version__ = "0.1.0"
