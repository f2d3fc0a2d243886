"""tinymlops: take a trained model to a fleet of heterogeneous edge devices and keep it healthy."""

__version__ = "0.1.0"

__all__ = ["__version__"]
