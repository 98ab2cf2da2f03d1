"""The bottom layer: errors, settings (plain data), registries, atomic files, the Hub, checkpoints, runs, runtime."""
