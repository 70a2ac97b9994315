"""Provider-adapter workers: translate OpenAI-shaped calls to each provider's native API."""
