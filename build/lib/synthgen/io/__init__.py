"""Storage formats and paths: one module owns each format (fsspec paths, training shards, output shards, WFDB)."""
