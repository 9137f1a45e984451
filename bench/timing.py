"""Interleaved timing: networks take turns (A B C, C B A, A B C, ...) so that load from other processes, and any
cost of coming first or last in a round, hits them alike."""
import statistics
import time


def interleave(runners, rounds, steps_per_round, warmup_steps):
    """Per-step seconds of each runner, one figure per round.

    Each runner is first called ``warmup_steps`` times (the first call compiles its graph). Then, in each of
    ``rounds`` rounds, every runner in turn runs ``steps_per_round`` steps, timed together; odd rounds take the
    runners in reverse order.

    Args:
        runners (dict[str, Callable[[], object]]): name to a callable that runs one synchronous step.
        rounds (int): number of rounds.
        steps_per_round (int): steps per runner per round.
        warmup_steps (int): untimed steps per runner before the first round.

    Returns:
        dict[str, list[float]], seconds per step of each runner in each round.
    """
    for run in runners.values():
        for _ in range(warmup_steps):
            run()
    per_step = {name: [] for name in runners}
    order = list(runners.items())
    for round_index in range(rounds):
        for name, run in order if round_index % 2 == 0 else reversed(order):
            start = time.perf_counter()
            for _ in range(steps_per_round):
                run()
            per_step[name].append((time.perf_counter() - start) / steps_per_round)
    return per_step


def instance_key(name, instance):
    """The runner name of copy ``instance`` of the network ``name``."""
    return f"{name}#{instance}"


def combine_instances(per_step, names, instances):
    """Average the copies of each network round by round.

    Args:
        per_step (dict[str, list[float]]): what :func:`interleave` returned, keyed by :func:`instance_key`.
        names (Iterable[str]): the networks.
        instances (int): copies of each.

    Returns:
        ``(per_round, spread)``: per network, the mean over its copies of each round's seconds per step; and per
        network, the slowest copy's median over the fastest copy's (1.0 with one copy).
    """
    per_round, spread = {}, {}
    for name in names:
        copies = [per_step[instance_key(name, instance)] for instance in range(instances)]
        per_round[name] = [statistics.fmean(round_times) for round_times in zip(*copies)]
        medians = [statistics.median(times) for times in copies]
        spread[name] = max(medians) / min(medians)
    return per_round, spread


def ratio_summary(samples, reference):
    """Compare two lists of per-round times measured in the same rounds.

    Returns:
        dict: ``ratio`` (median of ``samples`` over median of ``reference``), ``ratio_min`` and ``ratio_max``
        (the extremes of the round-by-round ratios), and each side's median, min and max in milliseconds.
    """
    round_ratios = [sample / ref for sample, ref in zip(samples, reference)]
    summary = {"ratio": statistics.median(samples) / statistics.median(reference),
               "ratio_min": min(round_ratios), "ratio_max": max(round_ratios), "rounds": len(samples)}
    for side, values in (("", samples), ("reference_", reference)):
        summary[f"{side}median_ms"] = 1e3 * statistics.median(values)
        summary[f"{side}min_ms"] = 1e3 * min(values)
        summary[f"{side}max_ms"] = 1e3 * max(values)
    return summary
