"""Errors a user can fix: the CLI prints them without a traceback and exits with code 2."""


class InputError(Exception):
    """Bad input (a path, a file, a row, a field): the message names it and says what was expected."""
