"""Atomic checkpoint writes, and the staging folders they use.

A file is written inside a private staging folder next to its destination (same file system, so ``os.replace`` is
atomic) and moved onto its final name, so a path holds either its old content or the complete new file. The staging
folder is removed whatever happens, except when the process is killed; :func:`remove_stale_staging_dirs` removes
such leftovers later. A staging folder is named ``.mindpet_staging_<pid>_<host>_<random>``: the process id and a tag
of the host that created it tell whether its owner still runs.
"""
import os
import re
import shutil
import socket
import tempfile
import time
import zlib

import mindspore as ms

from mindpet.utils.logger import logger

STAGING_PREFIX = ".mindpet_staging_"
# A staging folder unchanged for this long is stale even when its owner cannot be checked (another host).
STALE_AFTER_SECONDS = 10 * 60
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)_([0-9a-f]{8})_")


def make_staging_dir(directory):
    """Create a private staging folder inside ``directory`` whose name records this process and host.

    Args:
        directory (str): An existing folder.

    Returns:
        str, the path of the new, empty folder.
    """
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}_{_HOST_TAG}_", dir=directory)


def _process_runs(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to another user.
        return True
    return True


def _last_change(path):
    """The newest modification time of ``path`` and of everything inside it."""
    newest = os.path.getmtime(path)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.path.getmtime(os.path.join(root, name)))
            except FileNotFoundError:
                # Removed while walking: its owner is still at work.
                newest = time.time()
    return newest


def _is_stale(path, now):
    match = _STAGING_NAME.match(os.path.basename(path))
    if match and match.group(2) == _HOST_TAG and not _process_runs(int(match.group(1))):
        return True
    return now - _last_change(path) > STALE_AFTER_SECONDS


def remove_stale_staging_dirs(directory):
    """Remove the staging folders in ``directory`` that a killed save left behind.

    A staging folder is stale when the process that created it, on this host, no longer runs, or when nothing in
    it changed for ``STALE_AFTER_SECONDS`` (10 minutes). Folders of running saves are left alone. Each removal is
    logged as a warning on the ``mindpet`` logger.

    Args:
        directory (str): A checkpoint folder. A missing folder holds nothing to remove.

    Returns:
        list[str], the paths removed.

    Examples:
        >>> import os, tempfile
        >>> from mindpet.checkpoint.atomic import STAGING_PREFIX, remove_stale_staging_dirs
        >>> folder = tempfile.mkdtemp()
        >>> leftover = os.path.join(folder, STAGING_PREFIX + "999999999_00000000_x")
        >>> os.mkdir(leftover)
        >>> os.utime(leftover, (0, 0))
        >>> [os.path.basename(path) for path in remove_stale_staging_dirs(folder)]
        ['.mindpet_staging_999999999_00000000_x']
    """
    if not os.path.isdir(directory):
        return []
    now = time.time()
    removed = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(STAGING_PREFIX) and os.path.isdir(path) and _is_stale(path, now):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.warning("Removed the staging folder '%s' that an interrupted checkpoint save left behind.", path)
    return removed


def save_atomically(entries, append_dict, file_path, config):
    """Write ``entries`` to ``file_path`` so that the path holds either its old content or the complete new file.

    MindSpore's writer removes an existing file before writing and leaves its own temporary file behind on failure,
    so it writes inside a private staging folder next to ``file_path`` (see :func:`make_staging_dir`), and the
    staging folder goes away whatever happens short of a kill.

    Args:
        entries (list[dict]): ``{"name": str, "data": Tensor}`` items, as ``mindspore.save_checkpoint`` takes them.
        append_dict (dict, optional): Extra values stored beside the entries.
        file_path (str): The destination; its folder must exist.
        config (mindspore.train.CheckpointConfig): Gives ``enc_key``, ``enc_mode``, ``crc_check`` and ``format``.
    """
    staging_dir = make_staging_dir(os.path.dirname(os.path.abspath(file_path)))
    try:
        staged_path = os.path.join(staging_dir, os.path.basename(file_path))
        ms.save_checkpoint(entries, staged_path, async_save=False, append_dict=append_dict,
                           enc_key=config.enc_key, enc_mode=config.enc_mode, crc_check=config.crc_check,
                           format=config.format)
        os.replace(staged_path, file_path)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
