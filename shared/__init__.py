"""The modelbus wire contract and the helpers every service shares.

A reader can learn the whole protocol from this package: subjects
(:mod:`shared.subjects`), headers (:mod:`shared.headers`), the client-facing
messages (:mod:`shared.chat`), internal envelopes (:mod:`shared.envelopes`), the
compiled routing configuration (:mod:`shared.routing`) and the error tree
(:mod:`shared.errors`).
"""

CONTRACT_VERSION = "v1"
"""Version of the wire contract; it is part of every subject name."""
