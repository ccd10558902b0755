"""Test harness for tests/cluster: a real control plane built from Go modules, the adapter deployed into it."""
