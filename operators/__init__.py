"""Pure-Python stateful computations: bars, features and correlations.

No Bytewax here: each operator is a small class with frozen settings, an
``update`` method and a value that stays None until it is warm. flows/ wires
them into dataflows.
"""
