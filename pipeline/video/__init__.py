"""Video I/O: readers (PyAV, decord), samplers and supervised decode workers. Never imports clip_model.

Light on purpose (no torch, no FFmpeg): the command line reads the backend and engine choices from here."""
from typing import Literal

Backend = Literal["auto", "pyav", "decord"]
BACKENDS = ("auto", "pyav", "decord")
Engine = Literal["local", "ray"]  # where decode workers run: processes beside this one, or Ray tasks on a cluster
ENGINES: tuple[Engine, ...] = ("local", "ray")
