"""The single definition of flowshard's on-disk formats: the video manifest and the shard sample layout."""
