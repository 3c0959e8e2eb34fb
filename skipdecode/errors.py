"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class SkipDecodeError(Exception):
    """A problem with the user's input (model spec, data file, schedule, export folder)."""
