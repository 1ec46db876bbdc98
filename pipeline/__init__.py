"""CBAM gate benchmark: train CBAM-ResNets with interchangeable channel gates, probe,
measure and plot their attention, tracked in MLflow. Importing this package has no side
effects; the steps live in ``pipeline.steps`` and the CLI in ``pipeline.cli``."""

__version__ = "0.1.0"
