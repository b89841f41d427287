"""Execution: the venue protocol, the cost model and the paper broker."""
