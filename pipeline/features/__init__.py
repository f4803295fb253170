"""Features: model inputs cut from decoded frames, CLIP features per clip, the cross-video batcher, and the sliding
windows of the tag job (their decode worker and their assembly into per-video state)."""
