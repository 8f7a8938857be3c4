# mailmon: a small runtime image. Build: docker build -t mailmon .
# Run:  docker run -p 9917:9917 -v $PWD/config.yaml:/etc/mailmon/config.yaml:ro \
#         -v /path/to/secrets:/run/secrets:ro -v mailmon-data:/var/lib/mailmon mailmon
# The config's history.path should point under /var/lib/mailmon (a volume owned by the mailmon user).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY monitor ./monitor
# Runtime dependencies only (no test extras) plus uvloop, the C event loop that cuts CPU per probe
# (monitor/eventloop.py; `--event-loop asyncio` opts out), then drop the sources.
RUN pip install "./[uvloop]" && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/mailmon --shell /usr/sbin/nologin mailmon \
    && mkdir -p /var/lib/mailmon && chown 10001:10001 /var/lib/mailmon

USER 10001:10001
WORKDIR /var/lib/mailmon
VOLUME ["/var/lib/mailmon"]

EXPOSE 9917
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9917/-/healthy', timeout=4).status == 200 else 1)"]

# Config and secrets are mounted; the listen address must be reachable from outside the container.
ENTRYPOINT ["mailmon"]
CMD ["run", "--config", "/etc/mailmon/config.yaml", "--listen", "0.0.0.0:9917"]
