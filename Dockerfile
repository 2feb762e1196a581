FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml ./
COPY autopack ./autopack
COPY tasks ./tasks
COPY web ./web
COPY config ./config
COPY prompts ./prompts
COPY migrations ./migrations
COPY examples ./examples
RUN pip install --no-cache-dir -e .
ENV AUTOPACK_PROFILE=prod AUTOPACK_STATE_DIR=/var/lib/autopack
