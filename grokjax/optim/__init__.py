"""Optimizers as optax GradientTransformations with per-model hyperparameters in their state (``factory``)."""
