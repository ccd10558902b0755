"""Rack power-capping simulator: H100 power curves, request traces, sensors, breaker, policies."""
