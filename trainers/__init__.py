"""flowshard training: streaming data from shards, TSN / I3D models, training and TSN-style evaluation."""
