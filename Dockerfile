# One image for every modelbus service; compose.yaml picks the service with
# `command:` (modelbus-config, modelbus-router, modelbus-provider, modelbus-secrets,
# modelbus-gateway).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install . \
    && useradd --system --create-home --uid 10001 modelbus

WORKDIR /home/modelbus
USER modelbus

# Services stop gracefully on SIGTERM (shared/runtime.py).
STOPSIGNAL SIGTERM
CMD ["modelbus", "--help"]
