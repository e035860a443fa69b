"""Conveyor's worker: runs the catalog's jobs with arq."""
