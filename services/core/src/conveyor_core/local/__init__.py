"""Tools for running Conveyor on one machine: a real Redis and a process runner."""
