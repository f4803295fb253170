"""The error type for checkpoints a user hands us: unreadable, unsafe, or not matching the model."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and what is wrong with it."""
