"""Payload adapters: the programs that transformations run (argv builders, output conventions)."""
