"""Pieces shared by every delta cell: validation, dtypes, activations, shard strategies, logging."""
