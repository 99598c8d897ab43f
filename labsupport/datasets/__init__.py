"""Notebooks 03 and 03b: the plates task, InternVL's json/jsonl format and its converters, the validator, statistics."""
