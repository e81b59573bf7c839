"""jobgate: one gateway in front of many asynchronous-job APIs."""

__version__ = "0.1.0"
