"""histo: find similar histopathology images with self-supervised encoders and Qdrant."""

__version__ = "0.1.0"
