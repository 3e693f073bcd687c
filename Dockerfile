# The inbound receiver. Build: docker build -t inbound .
# Run:   docker run -d -p 25:2525 -v inbound-data:/var/lib/inbound \
#            -v "$HOME/inbound-rules:/etc/inbound:ro" inbound   # a folder holding rules.yaml
# Other commands: docker run --rm -v "$HOME/inbound-rules:/r:ro" inbound check /r/rules.yaml
#
# The base image is a build argument so that a machine without an image registry can build on
# a local one (.ci/container-build.sh makes local/python:bookworm from Debian packages):
#   docker build --network=host --build-arg BASE=local/python:bookworm -t inbound .
# Any Debian-based image with `python` (>= 3.11) on PATH and the venv module works.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/inbound
# The dependencies first, in a layer of their own: a change to the code does not fetch them
# again. The placeholder package lets pip read pyproject.toml before the code is copied.
# constraints.txt: the versions CI tests with (README: "Dependencies and the lock file").
COPY pyproject.toml README.md constraints.txt /src/
RUN mkdir /src/inbound && touch /src/inbound/__init__.py \
 && /opt/inbound/bin/pip install -c /src/constraints.txt /src \
 && /opt/inbound/bin/pip uninstall -y inbound \
 && rm -rf /src/inbound /src/build /src/inbound.egg-info
COPY inbound /src/inbound
RUN /opt/inbound/bin/pip install --no-deps -c /src/constraints.txt /src \
 && /opt/inbound/bin/inbound --version

FROM ${BASE}
LABEL org.opencontainers.image.title="inbound" \
      org.opencontainers.image.description="Inbound mail receiver with Amazon SES receipt-rule semantics"
# A fixed UID and GID, so a bind-mounted data directory can be chowned to it (chown 10001).
RUN groupadd --system --gid 10001 inbound \
 && useradd --system --uid 10001 --gid inbound --home-dir /var/lib/inbound --no-create-home \
      --shell /usr/sbin/nologin inbound \
 && mkdir -p /etc/inbound /var/lib/inbound \
 && chown inbound:inbound /var/lib/inbound && chmod 0700 /var/lib/inbound
COPY --from=build /opt/inbound /opt/inbound
COPY rules/example.yaml /etc/inbound/rules.yaml
COPY container/healthcheck.py /usr/local/lib/inbound/healthcheck.py
ENV PATH=/opt/inbound/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A new named volume starts as a copy of this directory: owned by inbound, so it is writable,
# and 0700 (the receiver makes its data directory so at start anyway: SPEC section 7, Files).
VOLUME /var/lib/inbound
WORKDIR /var/lib/inbound
USER inbound:inbound
EXPOSE 2525
# SIGTERM (docker stop) makes `inbound serve` stop accepting, finish the sessions in flight
# (--drain-timeout, 30 s) and exit 0. It installs its own handlers, so it works as PID 1 without
# an init; give `docker stop -t 40` (compose: stop_grace_period) for the whole drain.
STOPSIGNAL SIGTERM
# Connects where PID 1's --listen says and waits for the SMTP greeting.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["python", "/usr/local/lib/inbound/healthcheck.py"]
ENTRYPOINT ["inbound"]
CMD ["serve", "--rules", "/etc/inbound/rules.yaml", "--data-dir", "/var/lib/inbound", \
     "--listen", "0.0.0.0:2525"]
