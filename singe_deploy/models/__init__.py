"""Models from specs, the built-in ResNets, and the adapters that make attention and detectors prunable."""
