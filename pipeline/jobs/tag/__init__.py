"""The tag job: batch tagging of video archives, resumable and searchable."""
