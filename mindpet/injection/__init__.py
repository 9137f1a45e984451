"""Applying a delta method to a network nobody edited: targeting, the dry run, injection, merging and summaries.

The public functions are exported from the top-level :mod:`mindpet` package.
"""
