"""Model bundle + manifest → output shards: manifests, shard plan and seeds, Ray sampler actors, writers."""
