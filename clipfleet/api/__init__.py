"""HTTP layer: schemas, routes and the FastAPI app the ingress deployment serves."""
