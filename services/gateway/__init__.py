"""The HTTP gateway: OpenAI Chat Completions and Anthropic Messages over HTTP, answered through NATS.

A NATS client like any other (its own broker identity, ``gateway``), it holds no
routing logic: each HTTP request becomes one request on
``llm.v1.chat.completions`` with the headers a NATS client sets, and the routers
decide where it goes. What it adds is the HTTP edge: API keys
(:mod:`~services.gateway.keys`), the two APIs' request, answer, stream and error
shapes (through :mod:`shared.formats`), the model list from the routing
configuration (:mod:`~services.gateway.config_follower`), and health checks.
See docs/http.md.
"""
