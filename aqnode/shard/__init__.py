"""The shard process: one event loop, the entity workers and the user's handlers.

Run as ``python -m aqnode.shard``. Nothing in this package talks to Redis, gRPC or the
supervisor's internals: every durable step is a frame to the supervisor.
"""
