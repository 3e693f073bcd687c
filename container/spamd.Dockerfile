# SpamAssassin's spamd from Debian's packages, for compose.yaml (no official image exists).
# Rules: those shipped in the package (run `sa-update` inside for newer ones).
# docker build -f container/spamd.Dockerfile -t inbound-spamd container/
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends spamd spamassassin \
 && rm -rf /var/lib/apt/lists/*
# The package's own unprivileged user; its home (/var/lib/spamassassin) holds the Bayes data.
USER debian-spamd
EXPOSE 783
# Foreground, logs on stderr. Any client may connect: publish this port nowhere, only the
# compose network reaches it.
CMD ["spamd", "--listen", "0.0.0.0:783", "--allowed-ips", "0.0.0.0/0", "--nouser-config", \
     "--syslog", "stderr", "--max-children", "4"]
