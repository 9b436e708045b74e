"""Single-model networks (``transformer``) and the one place that picks one (``registry``)."""
