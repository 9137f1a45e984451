"""TrainableParamsCheckPoint: a ``Model.train`` callback that saves only the trained parameters.

It follows ``CheckpointConfig`` as ``mindspore.train.ModelCheckpoint`` does, and is written against MindSpore's public
``Callback`` API only.
"""
import os
import re
import threading
import time

from mindspore import Tensor
from mindspore.train import Callback, CheckpointConfig

from mindpet.checkpoint.adapter_dir import write_adapter_directory
from mindpet.checkpoint.adapter_files import delta_file_contents
from mindpet.checkpoint.atomic import remove_stale_staging_dirs, save_atomically
from mindpet.checkpoint.formats import CHECKPOINT_FORMATS, TRAINING_COUNTER_KEYS, check_encryption_mode
from mindpet.checkpoint.guard import training_problems
from mindpet.checkpoint.selection import trained_parameters
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, check_bool, quote_value

_OWNER = "TrainableParamsCheckPoint"
# MindSpore refuses these CheckpointConfig settings together with format='safetensors': name and default.
_SAFETENSORS_DEFAULTS = (("enc_key", None), ("enc_mode", "AES-GCM"))
_WRITER_THREAD_NAME = "mindpet_delta_checkpoint_writer"
_BREAKPOINT_SUFFIX = "_breakpoint"
# The adapter directory written beside the checkpoints with save_adapter=True: <prefix>_adapter.
ADAPTER_SUFFIX = "_adapter"


def _check_config(config):
    if not isinstance(config, CheckpointConfig):
        raise argument_error(TypeError, _OWNER, "config", "a mindspore.train.CheckpointConfig or None", config)
    if config.format not in CHECKPOINT_FORMATS:
        raise argument_error(ValueError, _OWNER, "format", f"one of {CHECKPOINT_FORMATS}", config.format)
    if config.format == "safetensors":
        for name, default in _SAFETENSORS_DEFAULTS:
            if getattr(config, name) != default:
                # The value is not echoed: for enc_key it is a secret.
                raise ValueError(f"For '{_OWNER}', the argument '{name}' of CheckpointConfig must be "
                                 f"{default!r} when format is 'safetensors', because MindSpore does not "
                                 f"encrypt safetensors files.")
    if config.enc_key is not None:
        check_encryption_mode(config.enc_mode, "enc_mode", _OWNER)
    for name, enabled in (("remove_redundancy", config.remove_redundancy),
                          ("incremental", config.map_param_inc)):
        if enabled:
            raise argument_error(ValueError, _OWNER, name,
                                 "False (a delta checkpoint is always saved whole)", enabled)
    return config


def _check_prefix(prefix, returned_by_callable=False):
    if not isinstance(prefix, str) or "/" in prefix:
        expected = "a str without '/'" if returned_by_callable else "a callable or a str without '/'"
        raise argument_error(ValueError, _OWNER, "prefix", expected, prefix)
    return prefix


def _unused_prefix(directory, prefix):
    """``prefix``, or ``prefix_<n>`` with n above that of every file of an earlier run, as ModelCheckpoint does."""
    earlier_run = re.compile(re.escape(prefix) + r"(?:_(\d+))?-.*\.(?:" + "|".join(CHECKPOINT_FORMATS) + ")$")
    suffixes = []
    for name in os.listdir(directory):
        match = earlier_run.match(name)
        if match and _BREAKPOINT_SUFFIX + "." not in name:
            suffixes.append(int(match.group(1)) + 1 if match.group(1) else 1)
    return f"{prefix}_{max(suffixes)}" if suffixes else prefix


def _snapshot(tensor):
    # asnumpy() can alias the parameter's memory, and the next step updates it in place, so copy first.
    return Tensor.from_numpy(tensor.asnumpy().copy())


class TrainableParamsCheckPoint(Callback):
    """
    A `Model.train` callback that saves only the trained parameters of the network, as `ModelCheckpoint` would.

    It saves every parameter with ``requires_grad=True`` and never optimizer state, under the same keys
    (``Parameter.name``) as the full checkpoint. The saved network is ``config.saved_network`` when set, else the
    network given to `Model`. Files are named ``<prefix>-<epoch>_<step>.<format>`` and follow `CheckpointConfig`:
    save_checkpoint_steps or save_checkpoint_seconds, keep_checkpoint_max or keep_checkpoint_per_n_minutes,
    append_info, enc_key and enc_mode, crc_check, format (``'ckpt'`` or ``'safetensors'``), async_save and
    exception_save. It is a plain `mindspore.train.Callback`, not a `ModelCheckpoint` subclass.

    Every file is written to a staging folder next to it and moved into place with ``os.replace``, so a file
    under its final name is always complete; a failed save leaves the previous files as they were and raises.
    Staging folders that a killed run left behind are removed when training begins. The values are copied when
    the save triggers; with async_save (``True``, ``'thread'`` or ``'process'``) a background thread writes the
    copy, and the next save and the end of training wait for it and raise its error, if any.

    When training begins it also checks the setup as :class:`~mindpet.checkpoint.TrainingGuard` does (merged
    cells, an optimizer built before freezing) and logs a warning for each problem, and it refuses a network with
    no trainable parameter, which would give empty files.

    Args:
        prefix (Union[str, callable]): The file name prefix, or a callable that returns the whole file stem from the
            callback parameters, as in `ModelCheckpoint`. If `directory` already holds files of this prefix, it
            becomes ``<prefix>_1`` (then ``_2``, ...). Default: ``'DELTA_CKP'``.
        directory (Union[str, os.PathLike, callable], optional): The folder of the files, created if needed, or a
            callable that returns it from the callback parameters. ``None`` means the current working directory.
            Default: ``None``.
        config (CheckpointConfig, optional): The saving strategy. ``None`` means ``CheckpointConfig()``.
            Default: ``None``.
        save_adapter (bool): Whether each save also writes the delta with its config as an adapter directory
            (see :func:`~mindpet.save_delta`) named ``<prefix>_adapter`` beside the files; it is replaced at every
            save, so it holds the newest delta, and loads with :func:`~mindpet.load_delta` into a bare base.
            Default: ``False``.

    Inputs:
        - **run_context** (RunContext) - Passed by `Model.train` to each hook.

    Outputs:
        None. Checkpoint files appear in `directory`; `latest_ckpt_file_name` is the path of the newest one.

    Raises:
        ValueError: If `prefix` is neither callable nor a str without ``'/'``, `directory` names an existing file,
            `config.format` is not ``'ckpt'`` or ``'safetensors'``, a safetensors config sets `enc_key` or a
            non-default `enc_mode`, `enc_mode` is not ``'AES-GCM'``, ``'AES-CBC'`` or ``'SM4-CBC'``, or the config
            asks for `remove_redundancy` or `incremental`, which this callback does not implement. When training
            begins or a save triggers, if the saved network has no trainable parameter.
        TypeError: If `directory` is not a str, os.PathLike, callable or None, `config` is not a
            `CheckpointConfig`, or `save_adapter` is not a bool.
        ValueError: With `save_adapter`, when a save triggers, if the network holds no delta or deltas of several
            methods (see :func:`~mindpet.save_delta`).

    Examples:
        >>> import os
        >>> import tempfile
        >>> import numpy as np
        >>> import mindspore as ms
        >>> import mindspore.dataset as ds
        >>> from mindspore import nn
        >>> from mindspore.train import Model, CheckpointConfig
        >>> from mindpet.checkpoint import TrainableParamsCheckPoint
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> for param in net[0].get_parameters():
        ...     param.requires_grad = False
        >>> data = {"x": np.random.rand(8, 4).astype(np.float32), "y": np.random.randint(0, 2, (8,)).astype(np.int32)}
        >>> dataset = ds.NumpySlicesDataset(data, shuffle=False).batch(4)
        >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
        >>> model = Model(net, loss, nn.Adam(net.trainable_params(), 0.01))
        >>> ckpt_dir = tempfile.mkdtemp()
        >>> delta_cb = TrainableParamsCheckPoint(prefix='delta', directory=ckpt_dir,
        ...                                      config=CheckpointConfig(save_checkpoint_steps=2))
        >>> model.train(1, dataset, callbacks=[delta_cb])
        >>> os.path.basename(delta_cb.latest_ckpt_file_name)
        'delta-1_2.ckpt'
        >>> sorted(ms.load_checkpoint(delta_cb.latest_ckpt_file_name))
        ['2.bias', '2.weight']
    """

    def __init__(self, prefix='DELTA_CKP', directory=None, config=None, save_adapter=False):
        super().__init__()
        self._config = _check_config(CheckpointConfig() if config is None else config)
        self._save_adapter = check_bool(save_adapter, "save_adapter", _OWNER)
        self._prefix_func = prefix if callable(prefix) else None
        self._prefix = None if self._prefix_func else _check_prefix(prefix)
        self._directory_func = directory if callable(directory) else None
        self._directory = None
        self._cleaned_directories = set()
        if self._directory_func is None:
            if directory is not None and not isinstance(directory, (str, os.PathLike)):
                raise argument_error(TypeError, _OWNER, "directory", "a str, os.PathLike, callable or None",
                                     directory)
            self._directory = self._make_directory(os.getcwd() if directory is None else os.fspath(directory))
            if self._prefix_func is None:
                self._prefix = _unused_prefix(self._directory, self._prefix)

        self._append_dict = dict(self._config.append_dict or {})
        # append_info may carry starting counters, e.g. {'epoch_num': 3} when resuming.
        self._append_offsets = {key: self._append_dict[key] for key in TRAINING_COUNTER_KEYS
                                if key in self._append_dict}
        self._latest_ckpt_file_name = ""
        self._last_triggered_step = 0
        self._last_time = time.time()
        self._last_time_for_keep = time.time()
        self._cb_params = None
        self._writer = None
        self._writer_error = None

    @property
    def latest_ckpt_file_name(self):
        """str: The path of the newest checkpoint file, ``''`` before the first save."""
        return self._latest_ckpt_file_name

    def on_train_begin(self, run_context):
        """Check the setup, and remove staging folders that a killed save left in the checkpoint folder.

        Args:
            run_context (RunContext): Context of the training run.

        Raises:
            ValueError: If the saved network has no trainable parameter.
        """
        cb_params = run_context.original_args()
        self._cb_params = cb_params
        self._trained_parameters(cb_params)
        for problem in training_problems(cb_params, _OWNER):
            logger.warning(problem)
        if self._directory is not None:
            self._clean_once(self._directory)
        self._last_time = time.time()

    def on_train_step_end(self, run_context):
        """Save when the config says a checkpoint is due.

        Args:
            run_context (RunContext): Context of the training run.
        """
        self._cb_params = run_context.original_args()
        self._save(self._cb_params, force=False)

    def on_train_end(self, run_context):
        """Save the last checkpoint, as `ModelCheckpoint` does, and wait until every file is written.

        Args:
            run_context (RunContext): Context of the training run.
        """
        self._save(run_context.original_args(), force=True)
        self._wait_for_writer()

    def __exit__(self, *exc_info):
        """When training raised: honour ``exception_save`` and leave no writer thread behind.

        The training error is the one that propagates; a failure to save here is logged as an error.
        """
        if exc_info[0] is None:
            return
        if self._config.exception_save and self._cb_params is not None:
            try:
                self._save_breakpoint(self._cb_params)
            except Exception as error:  # noqa: BLE001
                logger.error("For '%s', training raised and the exception_save checkpoint could not be written: %s",
                             _OWNER, error)
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            logger.error("For '%s', training raised and a background checkpoint write failed too: %s", _OWNER,
                         self._writer_error)
            self._writer_error = None

    def _make_directory(self, directory):
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise argument_error(ValueError, _OWNER, "directory", "a folder, not an existing file", directory)
        os.makedirs(directory, exist_ok=True)
        return directory

    def _clean_once(self, directory):
        if directory not in self._cleaned_directories:
            remove_stale_staging_dirs(directory)
            self._cleaned_directories.add(directory)

    def _saved_network(self, cb_params):
        return self._config.saved_network if self._config.saved_network is not None else cb_params.network

    def _trained_parameters(self, cb_params):
        network = self._saved_network(cb_params)
        params = trained_parameters(network)
        if not params:
            raise ValueError(f"For '{_OWNER}', the network {type(network).__name__!r} has no trainable parameters "
                             f"(requires_grad=True, optimizer state aside), so a delta checkpoint would be empty. "
                             f"Freeze with freeze_delta(...) so that the delta stays trainable.")
        return params

    def _due(self, cb_params, force):
        """Whether a checkpoint is due at this step, by save_checkpoint_steps or save_checkpoint_seconds."""
        steps = self._config.save_checkpoint_steps
        if steps:
            return force or cb_params.cur_step_num >= self._last_triggered_step + steps
        seconds = self._config.save_checkpoint_seconds
        if seconds:
            now = time.time()
            if force or now - self._last_time > seconds:
                self._last_time = now
                return True
        return False

    def _location(self, cb_params):
        """The file prefix and folder of this save; the callables are asked anew each time."""
        prefix, directory = self._prefix, self._directory
        if self._prefix_func is not None:
            prefix = _check_prefix(self._prefix_func(cb_params), returned_by_callable=True)
        if self._directory_func is not None:
            directory = self._make_directory(os.fspath(self._directory_func(cb_params)))
            self._clean_once(directory)
        return prefix, directory

    def _save(self, cb_params, force):
        if cb_params.cur_step_num == self._last_triggered_step or not self._due(cb_params, force):
            return
        self._wait_for_writer()
        prefix, directory = self._location(cb_params)
        if self._prefix_func is not None:
            file_name = f"{prefix}.{self._config.format}"
        else:
            step_in_epoch = (cb_params.cur_step_num - 1) % cb_params.batch_num + 1
            file_name = f"{prefix}-{cb_params.cur_epoch_num}_{step_in_epoch}.{self._config.format}"
        file_path = os.path.join(directory, file_name)
        self._last_triggered_step = cb_params.cur_step_num
        write_args = self._write_args(cb_params, file_path)
        previous_keep_time, self._last_time_for_keep = self._last_time_for_keep, time.time()
        # The prefix is passed along because a callable prefix may change it while a background write runs.
        write_args += (prefix, previous_keep_time)
        if self._config.async_save:
            self._writer = threading.Thread(target=self._write_in_background, name=_WRITER_THREAD_NAME,
                                            args=write_args)
            self._writer.start()
        else:
            self._write(*write_args)
        self._latest_ckpt_file_name = file_path

    def _write_args(self, cb_params, file_path):
        """The copied values to write: the trained parameters and the append_info values of this step."""
        entries = [{"name": param.name, "data": _snapshot(param)} for param in self._trained_parameters(cb_params)]
        for key, offset in self._append_offsets.items():
            counter = cb_params.cur_epoch_num if key == "epoch_num" else cb_params.cur_step_num
            self._append_dict[key] = offset + counter
        # Each write gets its own copy: the next save updates the counters while a background write may still run.
        append_dict = {key: _snapshot(value) if isinstance(value, Tensor) else value
                       for key, value in self._append_dict.items()}
        adapter = (delta_file_contents(self._saved_network(cb_params), None, _OWNER) if self._save_adapter
                   else None)
        return entries, append_dict, file_path, adapter

    def _save_breakpoint(self, cb_params):
        """Write the delta as ``<prefix>-<epoch>_<step>_breakpoint.<format>`` after training raised."""
        prefix, directory = self._location(cb_params)
        file_path = os.path.join(directory, f"{prefix}-{cb_params.cur_epoch_num}_{cb_params.cur_step_num}"
                                            f"{_BREAKPOINT_SUFFIX}.{self._config.format}")
        entries, append_dict, _, _ = self._write_args(cb_params, file_path)
        save_atomically(entries, append_dict, file_path, self._config)
        logger.warning("For '%s', training raised; the trained parameters were saved to '%s' (exception_save).",
                       _OWNER, file_path)

    def _write(self, entries, append_dict, file_path, adapter, prefix, previous_keep_time):
        save_atomically(entries, append_dict, file_path, self._config)
        if adapter is not None:
            write_adapter_directory(os.path.join(os.path.dirname(file_path), prefix + ADAPTER_SUFFIX), *adapter)
        # Old files go only once the new one is in place, so a failed save never costs an older file.
        self._remove_outdated_files(file_path, prefix, previous_keep_time)

    def _write_in_background(self, *write_args):
        try:
            self._write(*write_args)
        except Exception as error:  # noqa: BLE001
            # Any failure is handed to the training thread, which raises it at the next save or at the end.
            self._writer_error = error

    def _wait_for_writer(self):
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise error

    def _checkpoint_files(self, directory, prefix):
        """The files of ``prefix`` in ``directory``: ``<prefix>-<epoch>_<step>.<format>``, no letters after it."""
        suffix = "." + self._config.format
        files = []
        for name in os.listdir(directory):
            middle = name[len(prefix):-len(suffix)]
            if name.startswith(prefix + "-") and name.endswith(suffix) and not any(c.isalpha() for c in middle):
                files.append(os.path.join(directory, name))
        return files

    def _remove_outdated_files(self, new_file, prefix, previous_keep_time):
        """Apply keep_checkpoint_max or keep_checkpoint_per_n_minutes to the files older than ``new_file``."""
        older_files = [path for path in self._checkpoint_files(os.path.dirname(new_file), prefix) if path != new_file]
        keep_max = self._config.keep_checkpoint_max
        keep_minutes = self._config.keep_checkpoint_per_n_minutes
        outdated = []
        if keep_max:
            surplus = len(older_files) + 1 - keep_max
            outdated = sorted(older_files, key=os.path.getmtime)[:max(surplus, 0)]
        elif keep_minutes:
            now = time.time()
            if now - previous_keep_time < keep_minutes * 60:
                # Of the files written in the last keep_minutes, only the oldest stays (besides the new one).
                recent = sorted((path for path in older_files if now - os.path.getmtime(path) < keep_minutes * 60),
                                key=os.path.getmtime)
                outdated = recent[1:]
        for path in outdated:
            try:
                os.remove(path)
            except OSError as error:
                logger.warning("For '%s', could not remove the older checkpoint %s: %s", _OWNER, quote_value(path),
                               error)
