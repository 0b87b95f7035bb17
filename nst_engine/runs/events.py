"""What a run tells as it goes, and a listener that hears nothing (for scripts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nst_engine.distributed.scheduler import Progress


class Listener(Protocol):
    """Where a run's news goes: the CLI prints it; ``Silent`` drops it."""

    #: whether it wants ``progress`` (a render then keeps a board of what each worker does)
    live: bool

    def note(self, line: str) -> None:
        """A line for the person running it (the plan, where it runs, a wait)."""

    def warn(self, line: str) -> None:
        """Something worth knowing that does not stop the run."""

    def progress(self, progress: Progress) -> None:
        """How a render stands (often: a live view's refresh)."""

    def connected(self, line: str, total: int = 0) -> None:
        """The run reached its cluster (``line`` says which, and what it will do with how
        many items: ``total``)."""

    def row(self, where: str, row: dict[str, Any]) -> None:
        """A result row as it comes (a benchmark's sizes)."""


class Silent:
    """A listener for Python callers that want only the result."""

    live = False

    def note(self, line: str) -> None:
        pass

    def warn(self, line: str) -> None:
        pass

    def progress(self, progress: Progress) -> None:
        pass

    def connected(self, line: str, total: int = 0) -> None:
        pass

    def row(self, where: str, row: dict[str, Any]) -> None:
        pass
