"""Tests of shipyard.health."""
