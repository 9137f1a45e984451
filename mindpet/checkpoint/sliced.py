"""Merging the delta checkpoints of a model-parallel run into one full delta checkpoint.

Under semi-auto parallel each rank holds, and :class:`~mindpet.checkpoint.TrainableParamsCheckPoint` saves, only its
slice of every split delta parameter. The strategy file that training writes
(``set_auto_parallel_context(strategy_ckpt_config={'save_file': ...})``) records how each parameter was split.
:func:`merge_sliced_delta_checkpoints` checks that the rank files and the strategy file fit together and hands the
merge to MindSpore's ``transform_checkpoints``, which also undoes optimizer sharding.
"""
import glob
import os
import re
import shutil

import mindspore as ms
import numpy as np
from mindspore.train import CheckpointConfig

from mindpet.checkpoint.atomic import make_staging_dir, remove_stale_staging_dirs, save_atomically
from mindpet.checkpoint.formats import CHECKPOINT_FORMATS, TRAINING_COUNTER_KEYS, checkpoint_format
from mindpet.utils.validation import argument_error, check_str

_OWNER = "merge_sliced_delta_checkpoints"
_RANK_FOLDER = re.compile(r"rank_(\d+)$")
_MERGED_PREFIX = "merged"


def _files_in_rank_folders(folder):
    """The one checkpoint file in each ``rank_<id>`` subfolder of ``folder``, in rank order."""
    ranks = {}
    for entry in os.listdir(folder):
        match = _RANK_FOLDER.match(entry)
        if match and os.path.isdir(os.path.join(folder, entry)):
            ranks[int(match.group(1))] = os.path.join(folder, entry)
    if not ranks or sorted(ranks) != list(range(len(ranks))):
        raise ValueError(f"For '{_OWNER}', the folder '{folder}' must hold subfolders rank_0, rank_1, ... without "
                         f"gaps, but holds ranks {sorted(ranks)}.")
    files = []
    for rank in range(len(ranks)):
        found = sorted(path for fmt in CHECKPOINT_FORMATS for path in glob.glob(os.path.join(ranks[rank], "*." + fmt)))
        if len(found) != 1:
            raise ValueError(f"For '{_OWNER}', '{ranks[rank]}' must hold exactly one checkpoint file, but holds "
                             f"{[os.path.basename(path) for path in found]}. Pass the files as a list to choose.")
        files.append(found[0])
    return files


def _checkpoint_files(checkpoints):
    if isinstance(checkpoints, str):
        if not os.path.isdir(checkpoints):
            raise FileNotFoundError(f"For '{_OWNER}', the folder '{checkpoints}' does not exist.")
        return _files_in_rank_folders(checkpoints)
    if not isinstance(checkpoints, (list, tuple)) or not all(isinstance(path, str) for path in checkpoints):
        raise argument_error(TypeError, _OWNER, "checkpoints", "a folder (str) or a list of file paths in rank order",
                             checkpoints)
    if not checkpoints:
        raise argument_error(ValueError, _OWNER, "checkpoints", "a non-empty list", checkpoints)
    for path in checkpoints:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"For '{_OWNER}', the checkpoint file '{path}' does not exist.")
    return list(checkpoints)


def _load_strategy(strategy_file):
    """Parameter name -> ``ParallelLayouts`` of a strategy file, with MindSpore's own reader."""
    check_str(strategy_file, "strategy_file", _OWNER)
    if not os.path.isfile(strategy_file):
        raise FileNotFoundError(f"For '{_OWNER}', the strategy file '{strategy_file}' does not exist.")
    try:
        strategy = ms.build_searched_strategy(strategy_file)
    except (TypeError, ValueError) as error:
        raise ValueError(f"For '{_OWNER}', '{strategy_file}' is not a readable strategy file: {error}") from error
    if not strategy:
        raise ValueError(f"For '{_OWNER}', the strategy file '{strategy_file}' holds no parameter layout.")
    return strategy


def _device_count(layout):
    return int(np.prod(list(layout.dev_matrix[0].dim)))


def _check_rank_files(rank_values, files, strategy, strategy_file):
    """Every rank holds the same parameters, each with a layout whose device count is the number of ranks."""
    names = sorted(rank_values[0])
    for rank, values in enumerate(rank_values[1:], start=1):
        if sorted(values) != names:
            raise ValueError(f"For '{_OWNER}', rank {rank} ('{files[rank]}') holds the parameters {sorted(values)}, "
                             f"but rank 0 ('{files[0]}') holds {names}. Every rank's delta must hold the same "
                             f"parameters (pipeline parallelism is not supported).")
    unknown = [name for name in names if name not in strategy]
    if unknown:
        raise ValueError(f"For '{_OWNER}', the parameters {unknown} have no layout in the strategy file "
                         f"'{strategy_file}'. Use the strategy file of the run that saved these checkpoints.")
    for name in names:
        devices = _device_count(strategy[name])
        if devices != len(files):
            raise ValueError(f"For '{_OWNER}', the strategy file '{strategy_file}' lays '{name}' out over {devices} "
                             f"devices, but {len(files)} rank checkpoints were given.")
        slices = [values[name] for values in rank_values]
        for rank, piece in enumerate(slices):
            if (piece.shape, piece.dtype) != (slices[0].shape, slices[0].dtype):
                raise ValueError(f"For '{_OWNER}', the slice of '{name}' is {piece.dtype}{list(piece.shape)} in rank "
                                 f"{rank} but {slices[0].dtype}{list(slices[0].shape)} in rank 0.")
    return names


def merge_sliced_delta_checkpoints(checkpoints, strategy_file, output_file):
    """
    Merge the per-rank delta checkpoints of a model-parallel run into one checkpoint of full tensors.

    Each rank's file holds that rank's slice of every delta parameter, as :class:`TrainableParamsCheckPoint`
    saves it under semi-auto parallel. The layouts come from the strategy file of the same run; the merge itself
    is ``mindspore.transform_checkpoints`` to a single device, so optimizer-sharded parameters are merged too.
    Before merging, every rank must hold the same parameter names, each name must have a layout over exactly as
    many devices as there are rank files, and the slices of a parameter must agree in shape and dtype across
    ranks. The training counters ``epoch_num`` and ``step_num`` are copied from rank 0. The result loads with
    :func:`load_delta_checkpoint` on any device count. It is written to a temporary file and moved into place, so
    `output_file` is never half-written.

    Args:
        checkpoints (Union[str, list[str], tuple[str]]): The rank files, either as a folder holding subfolders
            ``rank_0``, ``rank_1``, ... with exactly one ``.ckpt`` or ``.safetensors`` file each, or as a list of
            file paths in rank order. All files have the same format.
        strategy_file (str): The strategy file saved by the training run (protobuf, or ``.json``).
        output_file (str): Where to write the merged delta; its extension, ``.ckpt`` or ``.safetensors``, picks
            the format. Its folder is created if missing.

    Returns:
        dict[str, tuple[int]], the merged shape of every parameter written.

    Raises:
        TypeError: If `checkpoints` is neither a str nor a list or tuple of str, or `strategy_file` or
            `output_file` is not a str.
        FileNotFoundError: If the folder, a rank file or the strategy file does not exist.
        ValueError: If a rank folder is missing or holds other than one checkpoint, if a file extension is neither
            ``.ckpt`` nor ``.safetensors`` or the rank files mix formats, if the strategy file cannot be read or is
            empty, if ranks hold different parameter names, if a parameter has no layout in the strategy file, if
            the number of rank files differs from a layout's device count, or if a parameter's slices differ in
            shape or dtype across ranks.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore.train import node_strategy_pb2 as pb
        >>> from mindpet.graph import merge_sliced_delta_checkpoints
        >>> folder = tempfile.mkdtemp()
        >>> # What a run with 2-way model parallelism leaves: a strategy file whose layout splits dim 0 of lora_b
        >>> # over the device matrix [2] (tensor_map counts device-matrix dims from the right; -1 = not split) ...
        >>> layout = pb.ParallelLayouts(dev_matrix=[pb.DevMatrix(dim=[2])], tensor_map=[pb.TensorMap(dim=[0, -1])],
        ...                             param_split_shape=[pb.ParamSplitShape()], indices_offset=[pb.IndicesOffset()],
        ...                             field=0, opt_weight_shard_step=0, opt_weight_shard_size=0)
        >>> strategy = pb.ParallelStrategyMap(current_stage=0, parallel_layout_item=[
        ...     pb.ParallelLayoutItem(param_name="dense.mindpet_delta_lora_b", parallel_layouts=layout)])
        >>> strategy_file = os.path.join(folder, "strategy.ckpt")
        >>> with open(strategy_file, "wb") as file:
        ...     _ = file.write(strategy.SerializeToString())
        >>> # ... and one delta file per rank, holding that rank's rows.
        >>> lora_b = np.arange(8, dtype=np.float32).reshape(4, 2)
        >>> for rank in range(2):
        ...     os.makedirs(os.path.join(folder, f"rank_{rank}"))
        ...     rows = ms.Tensor(lora_b[2 * rank:2 * rank + 2])
        ...     ms.save_checkpoint([{"name": "dense.mindpet_delta_lora_b", "data": rows}],
        ...                        os.path.join(folder, f"rank_{rank}", "delta-1_4.ckpt"))
        >>> merge_sliced_delta_checkpoints(folder, strategy_file, os.path.join(folder, "delta_full.ckpt"))
        {'dense.mindpet_delta_lora_b': (4, 2)}
        >>> merged = ms.load_checkpoint(os.path.join(folder, "delta_full.ckpt"))
        >>> bool((merged["dense.mindpet_delta_lora_b"].asnumpy() == lora_b).all())
        True
    """
    files = _checkpoint_files(checkpoints)
    strategy = _load_strategy(strategy_file)
    check_str(output_file, "output_file", _OWNER)
    output_format = checkpoint_format(output_file, "output_file", _OWNER)
    input_format = checkpoint_format(files[0], "checkpoints", _OWNER)
    for path in files[1:]:
        if checkpoint_format(path, "checkpoints", _OWNER) != input_format:
            raise ValueError(f"For '{_OWNER}', the rank files must share one format, but '{files[0]}' is "
                             f"{input_format} and '{path}' is not.")

    rank_values = []
    counters = {}
    for rank, path in enumerate(files):
        values = ms.load_checkpoint(path, format=input_format)
        if rank == 0:
            counters = {key: values[key] for key in TRAINING_COUNTER_KEYS if key in values}
        rank_values.append({name: value for name, value in values.items() if name not in TRAINING_COUNTER_KEYS})
    names = _check_rank_files(rank_values, files, strategy, strategy_file)

    # abspath also resolves '..', which MindSpore refuses in the paths it is given.
    output_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    # The scratch files live in a staging folder next to the output, not under $TMPDIR: a killed merge leaves them
    # where the next merge (or TrainableParamsCheckPoint) into this folder finds and removes them.
    remove_stale_staging_dirs(output_dir)
    work_dir = make_staging_dir(output_dir)
    try:
        # transform_checkpoints reads <folder>/rank_<id>/*; each rank folder gets that rank's parameters only.
        source_dir, target_dir = os.path.join(work_dir, "source"), os.path.join(work_dir, "target")
        for rank, values in enumerate(rank_values):
            os.makedirs(os.path.join(source_dir, f"rank_{rank}"))
            ms.save_checkpoint([{"name": name, "data": values[name]} for name in names],
                               os.path.join(source_dir, f"rank_{rank}", f"delta.{input_format}"),
                               format=input_format)
        ms.transform_checkpoints(source_dir, target_dir, _MERGED_PREFIX, src_strategy_file=strategy_file,
                                 dst_strategy_file=None, output_format=input_format)
        merged = ms.load_checkpoint(os.path.join(target_dir, "rank_0", f"{_MERGED_PREFIX}0.{input_format}"),
                                    format=input_format)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    entries = [{"name": name, "data": merged[name]} for name in names]
    save_atomically(entries, counters or None, output_file, CheckpointConfig(format=output_format))
    return {name: tuple(merged[name].shape) for name in names}
