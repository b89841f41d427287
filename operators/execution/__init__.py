"""Execution: the venue protocol, the cost model, the paper broker, and the execution service's parts.

The service's parts (issue 12; ``qbtc execute`` uses the limits and venue
health so far): hard limits (``limits``), the dead man's switch and venue
health (``deadman``), TWAP and iceberg workers (``algos``), execution
quality (``quality``) and start-up reconciliation (``reconcile``).
"""
