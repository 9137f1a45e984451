"""Parallel strategies: their form (:mod:`~mindpet.parallel.strategy`), each cell's shard plan
(:mod:`~mindpet.parallel.plan`), activations split like their input (:mod:`~mindpet.parallel.activation`),
strategies derived for injected cells (:mod:`~mindpet.parallel.derive`), whole-network
checks (:mod:`~mindpet.parallel.check`), and the one module that reads MindSpore's private parallel state
(:mod:`~mindpet.parallel.context`). :func:`~mindpet.check_shard_strategies` is exported from :mod:`mindpet`."""
