"""``make chaos``: kill modelbus processes under load and count every answer at the wire.

:mod:`bench.chaos.scenarios` lists the faults, :mod:`bench.chaos.stack`
starts the processes (and kills only those), :mod:`bench.chaos.loadgen`
sends raw NATS requests and records every reply message, and
:mod:`bench.chaos.counting` decides what became of each request. The
definitions behind each column are in docs/reliability.md.
"""
