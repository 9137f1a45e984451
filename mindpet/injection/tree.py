"""Replacing cells inside a network that is already built, keeping every parameter's full name."""
from mindspore import nn


def _replace_child(parent, key, child):
    """Put ``child`` where ``parent`` holds the cell registered under ``key``, the way ``parent`` stores cells."""
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        # Both keep their own index besides ``_cells`` (SequentialCell's ``cell_list``); item assignment updates it.
        parent[list(parent._cells).index(key)] = child  # pylint: disable=protected-access
    elif isinstance(parent, nn.CellDict):
        parent[key] = child
    else:
        setattr(parent, key, child)


def name_parameters(cell, path):
    """Name every parameter of ``cell`` by its full path, ``<path>.<local name>``, as a network built with ``cell``
    in place would have named it."""
    for local_name, param in cell.parameters_and_names():
        param.name = f"{path}.{local_name}" if path else local_name


def replace_cells(network, replacements):
    """Replace cells of ``network`` in place, wherever they are held.

    Args:
        network (Cell): the network.
        replacements (dict): ``{path: new cell}`` for cells found at those paths of ``network.cells_and_names()``;
            a cell held in several places is replaced in all of them. The path ``''`` replaces the network itself.

    Returns:
        Cell, ``network``, or its replacement when ``''`` is replaced.
    """
    cells = dict(network.cells_and_names())
    by_id = {id(cells[path]): new for path, new in replacements.items()}
    for parent in list(cells.values()):
        for key, child in list(parent._cells.items()):  # pylint: disable=protected-access
            if child is not None and id(child) in by_id:
                _replace_child(parent, key, by_id[id(child)])
    for path, new in replacements.items():
        name_parameters(new, path)
    return replacements.get("", network)
