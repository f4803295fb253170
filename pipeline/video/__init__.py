"""Video I/O: readers (PyAV, decord), samplers and supervised decode workers. Never imports clip_model.

Light on purpose (no torch, no FFmpeg): the command line reads the backend choices from here."""
from typing import Literal

Backend = Literal["auto", "pyav", "decord"]
BACKENDS = ("auto", "pyav", "decord")
