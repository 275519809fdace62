"""Rerunnable experiments whose tables README quotes (`python -m tfcap.experiments.quality`)."""
