"""The MindPet 1.0.4 import path of the freezing API (MindFormers imports it); it lives in :mod:`mindpet.freeze`."""
from mindpet.freeze import freeze_delta, freeze_from_config, freeze_modules

__all__ = ["freeze_delta", "freeze_from_config", "freeze_modules"]
