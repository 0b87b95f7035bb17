"""User-facing errors: one line that names the file or parameter and what to do."""

from __future__ import annotations


class NSTError(Exception):
    """A problem with the user's input; the CLI prints it and exits non-zero.

    ``field`` names the parameter at fault as the engine knows it (``ratio``, ``source``),
    never a front end's spelling: the CLI shows it as ``--ratio``, a manifest as
    ``demo.yaml:12: params.ratio``.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class ImageInputError(NSTError):
    """An image file that is missing, unreadable or unsafe to decode."""


class ConfigError(NSTError):
    """A parameter with a value the engine cannot use."""


class WeightsError(NSTError):
    """A weights source that is missing or does not fit VGG-19."""


def one_line(exc: BaseException) -> str:
    """The one-line form of any exception: its first non-empty line, or its type's name
    when it has no message. Every place that shows an exception to a person uses this."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


#: The most characters of a value from a file that a message shows (a lease's user name
#: could be megabytes: a message stays one readable line).
SHOWN_CHARACTERS = 200


def printable(text: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` as a message may show it: every character Python's ``repr`` would escape
    (control characters such as ESC, so no ANSI sequence reaches a terminal; line breaks;
    bidirectional overrides) written as ``repr`` writes it, as the manifest errors do with
    ``{value!r}``, but without quotes; cut to ``limit`` characters. For values read from
    files anyone could have written (a lease, a table), never trusted to be plain text."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
