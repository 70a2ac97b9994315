"""The external API formats modelbus speaks, one module per API, in both directions.

Each module holds that API's native wire structs (msgspec) and the translation
between it and the internal contract (:mod:`shared.chat`, OpenAI-shaped):

- *internal to native*, used by the provider adapters in ``services/providers/``
  to call the vendor;
- *native to internal*, used by an HTTP ingress that accepts the vendor's format
  from clients.

Modules: :mod:`shared.formats.openai` (Chat Completions, also the internal
contract), :mod:`shared.formats.anthropic` (Messages), :mod:`shared.formats.gemini`
(generateContent), :mod:`shared.formats.bedrock` (Converse), :mod:`shared.formats.ollama`
(``/api/chat``). No module here opens a connection or reads a credential: that is
the adapters' part.
"""
