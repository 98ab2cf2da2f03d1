"""Datasets and what feeds them: sampling, transforms, decoding, synthetic generators. Never imports models."""
