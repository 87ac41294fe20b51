"""The stacker: candidate features, lookup priors, the ranker (stacker) and decoding."""
