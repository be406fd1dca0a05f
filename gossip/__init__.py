"""Membership and per-node key/value state for Hypha: SWIM + Lifeguard and scuttlebutt.

The protocol core is sans-I/O (no sockets, no clock reads, no randomness of its
own); a thin trio driver owns the UDP socket and the timers. This package imports
nothing else of Hypha's.
"""
