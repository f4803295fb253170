"""Video I/O: readers (PyAV, decord), samplers and supervised decode workers. Never imports clip_model."""
