"""What the delta methods share: the mixed-precision and Dense cores, the mergeable base, configs and method records."""
