"""flowshard preprocessing: datasets, decoding, optical flow, shard writing and Ray orchestration."""

__version__ = "0.1.0"
