"""Plain model classes: load, preprocess, batched forward, postprocess. No Ray in here."""
