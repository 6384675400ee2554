"""Preference pairs: the record type, loaders for JSONL and saved HF datasets, and the built-in
synthetic generator."""
