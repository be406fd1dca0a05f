"""Break a running Hypha cluster on purpose, and check that it holds.

``faults`` holds the nemeses (SIGKILL, SIGSTOP/SIGCONT, restart, iptables
partitions and loss) and the discovery of local agents; ``soak`` runs a seeded
schedule of them against a fresh cluster and checks the invariants.
"""
