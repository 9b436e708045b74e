"""Sweep designs that choose their next runs: the phase-boundary estimate and the rule that picks runs."""
