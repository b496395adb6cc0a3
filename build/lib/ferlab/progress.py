"""A progress bar on long steps (decoding the dataset, classifying a split), on a terminal only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track as _rich_track

T = TypeVar("T")


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """``items`` with a bar on stderr while they are consumed; the bar is drawn only when
    stderr is a terminal (a log file gets the step's log lines instead) and goes when done."""
    console = Console(stderr=True)
    return iter(_rich_track(items, total=total, description=description, console=console,
                            transient=True, disable=not console.is_terminal))
