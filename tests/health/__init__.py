"""Tests of crossway.health."""
