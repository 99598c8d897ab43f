"""Notebooks 01-02: the embedded miniature InternVL2, official-format builds, the shipped vision towers, every tool's prompt."""
