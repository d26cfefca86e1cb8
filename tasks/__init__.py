"""Prefect tasks: thin wrappers over the stage functions in ``searchr1.stages``."""
