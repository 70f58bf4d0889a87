# Chat gateway image. Build and run as the original app was:
#   docker build -t chat:1 .
#   docker run --name chat -p 8000:8000 --env-file deploy/env.production -d chat:1
# The image defaults to ENVIRONMENT=production: it needs IP_REDIS (or
# REDIS_ADDRS) and ALLOWED_HOSTS, and stops at once naming what is missing,
# so a forgotten setting never runs a lone in-memory node. For a quick try
# without Redis: docker run -p 8000:8000 -e ENVIRONMENT=development chat:1
# (see `docker run --rm chat:1 -h` and docs/operations.md).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build context has no .git (.dockerignore), so the version and the
# revision come in as build args (`make image` passes both):
#   docker build --build-arg VERSION=v1.4.0 --build-arg REVISION=$(git rev-parse HEAD) -t chat:1 .
# Without them `gateway -version` and chat_build_info say "(devel)" and
# "unknown".
ARG VERSION=""
ARG REVISION=""
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" \
    -o /out/gateway ./cmd/gateway

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gateway /gateway
ENV ENVIRONMENT=production PORT=8000
EXPOSE 8000
USER nonroot
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/gateway", "-healthcheck"]
ENTRYPOINT ["/gateway"]
