"""The video pipeline: decode → sample → transform → encode → pool → classify → write, one module per stage."""
