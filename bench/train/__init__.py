"""Training: the Lightning task every stage trains through, stage caching/resume, and the run orchestration."""
