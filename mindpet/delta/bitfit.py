"""BitFit (Ben Zaken et al., 2022): train the model's own bias terms. It adds no cell, so it has no config; apply it
with ``freeze_delta(network, 'bitfit')``."""
from mindpet.delta.base.method import DeltaMethod

METHOD = DeltaMethod(name="bitfit", trains_pattern="*bias")
