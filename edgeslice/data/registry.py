"""The registry of named data sources: ``--data NAME`` (and :func:`edgeslice.data.load_data`) looks the name up here.

A dict, a decorator and ``list_``/``get_`` (timm's ``register_model``/``create_model``): :func:`register_dataset`
adds a loader, :func:`list_datasets` names them, :func:`get_dataset` returns one and raises ``ValueError`` listing
the valid names for an unknown one. The built-in sets register themselves in :mod:`edgeslice.data.builtin`.

Example:
    >>> from edgeslice.data import get_dataset, list_datasets
    >>> "digits" in list_datasets(), get_dataset("FMNIST").__name__
    (True, '_load_fashion_mnist')
"""

from __future__ import annotations

from collections.abc import Callable

from .bundle import DataBundle

__all__ = ["get_dataset", "list_datasets", "register_dataset"]

_LOADERS: dict[str, Callable[..., DataBundle]] = {}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}


def register_dataset(name: str) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorator: ``--data name`` (and :func:`load_data`) calls the decorated loader with the keyword arguments
    ``image_size`` (int or None: the loader's own size), ``seed`` (for any split it draws), ``download`` (bool) and
    ``root`` (the data directory, a Path); it returns a :class:`DataBundle`.

    Example:
        >>> @register_dataset("my-set")  # doctest: +SKIP
        ... def my_set(*, image_size, seed, download, root):
        ...     return DataBundle(...)
    """
    if name in _LOADERS:
        raise ValueError(f"data source {name!r} is registered already")

    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _LOADERS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Returns the names ``load_data`` accepts besides folder paths, sorted."""
    return sorted(_LOADERS)


def get_dataset(name: str) -> Callable[..., DataBundle]:
    """The loader registered as ``name`` (case-insensitive, surrounding blanks ignored; ``fmnist`` is an alias).

    Raises:
        ValueError: no data source has that name (the message lists the valid names).
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _LOADERS[key]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; valid: {', '.join(list_datasets())}") from None
