"""The error types for what a user hands us. A ``UserError`` says that an option, a file, a model name or a config
cannot be used, naming it and what to do; the CLI prints it as one line. Any other exception that reaches the CLI
is a bug of ours, and it says so with a short traceback. (A ``ValueError``, so that library callers catching the
standard type keep working.)"""


class UserError(ValueError):
    """What the user gave cannot be used; the message names it and what to do."""


class CheckpointError(UserError):
    """A checkpoint cannot be used; the message names the file and what is wrong with it."""
