"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class SkipDecodeError(Exception):
    """A problem with the user's input (model spec, data file, schedule, export folder)."""


def check_share(share: float, flag: str) -> float:
    """A flag's value that must be a share in [0, 1], refused in one line naming the flag."""
    if not 0 <= share <= 1:
        raise SkipDecodeError(f"{flag}: {share:g} is not a share in [0, 1]")
    return share
