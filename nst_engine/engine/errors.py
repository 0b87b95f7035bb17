"""User-facing errors: one line that names the file or option and what to do."""


class NSTError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits non-zero."""


class ImageInputError(NSTError):
    """An image file that is missing, unreadable or unsafe to decode."""


class ConfigError(NSTError):
    """An option with a value the engine cannot use."""


class WeightsError(NSTError):
    """A weights source that is missing or does not fit VGG-19."""
