"""The one progress protocol: wrap a loop that may take more than a few seconds.

A stage gets one from its context (``ctx.progress``: a tqdm bar, or silence with
``--no-progress``); library code takes a ``Progress`` argument and defaults to
:func:`no_progress`, so it stays quiet when called from tests or notebooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]: ...


def no_progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    return iter(items)


def bar_progress(prefix: str, enabled: bool = True) -> Progress:
    """A tqdm bar per loop, labelled ``<prefix>: <desc>``; silent when ``enabled`` is False."""

    def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        from tqdm.auto import tqdm

        return iter(tqdm(items, desc=f"{prefix}: {desc}", total=total, disable=not enabled))

    return progress
