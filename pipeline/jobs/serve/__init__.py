"""``serve``: a read-only web page over a tag index (search, watch the moment, each video's timeline)."""
