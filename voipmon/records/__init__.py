"""Domain records: what the analysis emits, the queue and channel carry and the store keeps."""
