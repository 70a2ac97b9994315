"""The benchmark's scenarios, one module per kind of measurement.

* :mod:`.latency`: a (added latency at concurrency 1) and g (tracing cost),
  from one interleaved measurement of four series;
* :mod:`.throughput`: b (through llm-katan) and c (bus only, mock provider);
* :mod:`.streaming`: d (time to first token, inter-token latency);
* :mod:`.hotswap`: e (configuration changes under load);
* :mod:`.memory`: f (RSS of every modelbus process, idle and under load).

Each returns a JSON-ready section with ``status: ok``; the runner turns an
exception into ``status: error`` with its message.
"""
