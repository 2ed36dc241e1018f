"""Helpers for testing code built on Crossway: a private etcd process."""
