# Postern in a container: multi-stage build, runs as the unprivileged
# postern user with the package's production defaults (SMTP on 0.0.0.0:25,
# data in /var/lib/postern — mount a volume there: it holds the queue).
#
#   docker build -t postern .
#   docker run -d --name postern -p 25:25 -v postern-data:/var/lib/postern postern
#   docker logs postern          # the first start prints the admin password
#
# Untested here: the machines this project is built on have no container
# runtime; the package and the unit (packaging/) are what tests/test_package.py
# checks. Binding port 25 as a non-root user relies on the container runtime
# setting net.ipv4.ip_unprivileged_port_start=0 in the container's network
# namespace (Docker ≥ 20.10 and Podman do). The admin UI listens on
# 127.0.0.1:8025 inside the container: reach it with docker exec, or mount a
# config with admin.listen = "0.0.0.0:8025" and publish it on a private
# address only.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p postern \
 && objcopy --strip-debug target/release/postern /postern

FROM debian:bookworm-slim
RUN groupadd --system postern \
 && useradd --system --gid postern --home-dir /var/lib/postern --no-create-home \
      --shell /usr/sbin/nologin postern \
 && install -d -o postern -g postern -m 0750 /var/lib/postern
COPY --from=build /postern /usr/bin/postern
COPY packaging/postern.toml /etc/postern/postern.toml
USER postern
VOLUME /var/lib/postern
EXPOSE 25
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/postern", "--config", "/etc/postern/postern.toml"]
CMD ["run"]
