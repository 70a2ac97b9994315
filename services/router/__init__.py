"""The router worker: stateless; resolves requests against a hot-swapped routing table."""
