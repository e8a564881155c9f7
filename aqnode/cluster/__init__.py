"""Cluster mode, a subsystem of the supervisor process (SPEC 10).

Built so far: membership in Redis (heartbeats in Redis time), the deterministic master
(the live member with the lowest server id) and the epoch taken atomically on every
change of master, and what ``aqnode status`` shows of them. Placement of entities,
petitions, forwarding and failover of the assignment table are not built yet.
"""
