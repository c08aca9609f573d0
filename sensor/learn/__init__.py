"""Learning from traces and recordings: runs read from every layout, features, baseline detectors."""
