"""The secrets service: hands credentials to provider workers by reference, nothing else."""
