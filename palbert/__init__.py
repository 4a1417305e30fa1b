"""palbert: multi-task BERT with Projected Attention Layers, as a reproducible DVC + MLflow workflow."""

__version__ = "0.1.0"
