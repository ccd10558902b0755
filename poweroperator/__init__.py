"""Rack power capping: the pure policy (`policy`) and the live loop's parts (Lease, agents, replicas)."""
