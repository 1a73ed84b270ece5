"""User-facing error type: one line that names the file, key or value and what was expected."""


class UserError(Exception):
    """A problem with the user's input (file, key, value). ``run.py`` prints it on one line and exits 2."""
