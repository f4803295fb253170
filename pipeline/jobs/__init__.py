"""Jobs: classify, benchmark, train, tag, demo. Built on the stages in pipeline/ and on pipeline.video."""
