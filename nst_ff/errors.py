"""Errors caused by what a user passed in (a file, a path, a setting).

Entry points print these as one line and exit non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Base class: the message names the file or setting, what is wrong, and what to do."""
