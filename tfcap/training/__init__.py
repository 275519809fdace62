"""Training phases: cross-entropy (xe), self-critical (scst) and adversarial (gan)."""
