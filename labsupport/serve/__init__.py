"""Notebook 06 (the deploy environment): LMDeploy's pipeline shape, its CPU stand-in, the OpenAI-compatible endpoint, the demo."""
