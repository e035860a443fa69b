"""Conveyor's HTTP api: validates, enqueues and answers questions about jobs."""
