"""The peak resident memory of this process, read so that a parent's size cannot leak into it.

On Linux ``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``fork`` and ``exec``: a process started by a large parent
reports at least the parent's resident size at the fork, whatever it used itself. ``VmHWM`` in
``/proc/self/status`` is the high-water mark of this process's own address space, which ``exec`` starts afresh, so
the benchmarks' worker processes read that (and ``ru_maxrss`` where there is no ``/proc``). Imports neither
MindSpore nor torch.
"""
import resource

STATUS = "/proc/self/status"


def peak_rss_kib():
    """The high-water mark of this process's resident memory, in KiB."""
    try:
        with open(STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
