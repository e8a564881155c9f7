"""The supervisor process (``aqnode serve``): gRPC, the write-ahead log, routing, shards.

It never imports or runs user code: the shards send it their message catalogue.
"""
