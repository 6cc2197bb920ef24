"""Encoders: SSL methods (trainable) and baselines, one registry; artifacts carry preprocessing."""
