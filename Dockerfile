# Chat gateway image. Build and run as the original app was:
#   docker build -t chat:1 .
#   docker run --name chat -p 8000:8000 --env-file .env -d chat:1
# With no Redis configured (ENVIRONMENT=development, the default) it runs
# the embedded engine; ENVIRONMENT=production needs IP_REDIS/PORT_REDIS and
# ALLOWED_HOSTS (see `docker run --rm chat:1 -h`).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/gateway ./cmd/gateway

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gateway /gateway
ENV ENVIRONMENT=development PORT=8000
EXPOSE 8000
USER nonroot
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/gateway", "-healthcheck"]
ENTRYPOINT ["/gateway"]
