# The sidecar's image: what `python -m proxy serve` needs and nothing more (docs/fleet.md).
# Build: docker build -t llm-sidecar .
# The config and the recording live on mounted paths: /etc/llm-sidecar and /var/lib/llm-sidecar.

# The Python the test suite runs on (3.11); the package takes 3.11 or later.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the package and its runtime dependencies into a venv of their own -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# No extras: plotly (report charts) and openai (the demo's client) stay out of every pod.
# A venv without pip, filled by the build stage's pip: the final image gets the packages only.
RUN python -m venv --without-pip /opt/sidecar \
    && pip --python /opt/sidecar/bin/python install .

# --- final: the slim base, the venv, an unprivileged user ----------------------------------
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/sidecar /opt/sidecar
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sidecar \
    && mkdir -p /etc/llm-sidecar /var/lib/llm-sidecar \
    && chown 10001:10001 /var/lib/llm-sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_HEALTH_URL=http://127.0.0.1:8787/_proxy/health
USER 10001:10001
# A relative record.path (./sidecar.db, the default) lands on the recording volume.
WORKDIR /var/lib/llm-sidecar
VOLUME ["/var/lib/llm-sidecar"]
EXPOSE 8787
# Exec form below, so python is PID 1 and gets the SIGTERM itself: it stops accepting,
# drains in-flight requests for limits.shutdown_grace, then flushes the recording.
STOPSIGNAL SIGTERM
# The slim base has no curl: the standard library asks instead (any answer but 2xx fails).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SIDECAR_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["serve", "--config", "/etc/llm-sidecar/config.yaml"]
