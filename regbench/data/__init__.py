"""Dataset loaders: locate or download, verify, decode, cache."""
