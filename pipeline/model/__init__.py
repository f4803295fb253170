"""The model seam: the family table, loading and names, VideoTextModel, prompts, pooling, scoring, state."""
