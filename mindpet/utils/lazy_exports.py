"""Package attributes that import their module on first use (PEP 562)."""
import importlib


def lazy_exports(package_name, exports, package_globals):
    """Build a package's ``__getattr__`` and ``__dir__`` for names that are imported only when first used.

    Importing one delta method (or one graph utility) must not import the others, so a package ``__init__``
    lists its public names instead of importing them.

    Args:
        package_name (str): the package's ``__name__``.
        exports (dict[str, str]): public name -> module that defines it.
        package_globals (dict): the package's ``globals()``.

    Returns:
        tuple(callable, callable): the package's ``__getattr__`` and ``__dir__``.
    """
    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module '{package_name}' has no attribute '{name}'")

    def __dir__():
        return sorted(set(package_globals) | set(exports))

    return __getattr__, __dir__
