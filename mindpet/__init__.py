"""mindpet: parameter-efficient fine-tuning (delta tuning) for MindSpore.

Delta cells live in :mod:`mindpet.delta`; freezing and delta checkpoints in :mod:`mindpet.graph`.
"""
__version__ = "2.0.0"
