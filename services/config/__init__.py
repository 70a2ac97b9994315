"""The config service: sole writer of routing configuration.

It validates documents, compiles them to a :class:`shared.routing.RoutingConfig`,
appends one :class:`shared.admin.ConfigRecord` per revision to the JetStream
stream :data:`shared.subjects.CONFIG_STREAM` (the stream sequence is the revision), and
announces every change on :data:`shared.subjects.CONFIG_EVENTS`.
"""
