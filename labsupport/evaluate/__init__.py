"""Notebook 05 and every before/after: held-out scoring, conversion to the official format, the merge proven, GPU results read."""
