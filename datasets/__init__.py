"""Dataset annotations, shipped class lists and prompt templates.

Note: this package shadows Hugging Face's ``datasets``; the project never depends on that one.
"""
from pathlib import Path

DATA_DIR = Path(__file__).with_name("data")
