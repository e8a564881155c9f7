"""Small process-independent helpers: child processes, the hash ring, host:port, backoff."""
