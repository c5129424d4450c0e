"""Sharded checkpoints: each rank writes and reads its own shards with torch.distributed.checkpoint."""
