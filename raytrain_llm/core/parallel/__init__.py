"""How the model is spread over the workers: DDP replicas or FSDP2 shards (`distributed.strategy`)."""
