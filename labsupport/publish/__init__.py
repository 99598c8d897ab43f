"""Notebook 07: the model card written from the course's results, pre-flight checks and the upload routes."""
