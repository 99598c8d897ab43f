"""What every environment imports (all three, and a bare python3 for envs): paths, checkpoints, tiling, plots, progress, credentials."""
