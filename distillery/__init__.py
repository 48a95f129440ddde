"""Distillery's command line: `distillery up | api | worker` (see distillery.cli)."""
