"""Notebook 04: XTuner's own config and its edits, presets, the launcher, safe runs, the CPU shims (the course environment)."""
