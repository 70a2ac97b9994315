"""The secrets service: hands credentials to provider workers by reference, and keeps the encrypted secrets store."""
