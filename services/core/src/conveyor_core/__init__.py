"""Conveyor's shared contract: what the api and the worker both import."""
