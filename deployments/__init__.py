"""Ray Serve deployments: thin shells over the plain classes in `clipfleet`."""
