"""The config service: sole writer of routing configuration.

It validates documents, compiles them to a :class:`shared.routing.RoutingConfig`,
stores it in the JetStream KV bucket :data:`shared.subjects.CONFIG_BUCKET`, and
announces every change on :data:`shared.subjects.CONFIG_EVENTS`.
"""
