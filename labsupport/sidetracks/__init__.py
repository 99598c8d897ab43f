"""Notebooks 08-10, the seeds' side tracks: self-cognition and LLaVA with XTuner, ms-swift. They do not import each other."""
