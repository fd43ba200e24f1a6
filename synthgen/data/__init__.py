"""Sources → training shards: PhysioNet layouts read, preprocessed, labelled and split (`synthgen prepare`)."""
