"""Observability: Ray metrics, OpenTelemetry tracing, request logs and process figures."""
