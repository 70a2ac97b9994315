"""The ``modelbus`` command-line tool: an operator's client of the bus, not a service."""
