"""The video pipeline, in layers that import one way: jobs/ (and cli.py) -> features/, model/, eval/ -> video/,
clip_model, datasets."""
