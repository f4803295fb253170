"""Jobs: classify, benchmark, train, tag, serve, demo. Built on pipeline.features, pipeline.model, pipeline.eval and
pipeline.video."""
