"""Pure placement functions: the credit-based mycelial scheduler and its baselines.

Same inputs, same output, whatever order the nodes come in. This package imports
nothing else of Hypha's (and never trio, sockets or the clock).
"""
