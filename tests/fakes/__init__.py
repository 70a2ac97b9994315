"""Hand-made protocol fakes for upstreams no third-party test server speaks.

Each follows its provider's published API docs, not modelbus's adapters.
"""
