// Package validate holds only tests: they check the deploy files against
// the real schemas, which the gateway module itself does not depend on.
//
//   - deploy/k8s/*.yaml decode strictly (unknown or duplicate fields are
//     errors) into the Kubernetes API types of k8s.io/api, and Redis's
//     maxmemory fits inside its container's memory limit;
//   - deploy/docker-compose.yml loads with the Compose loader
//     (compose-go, which validates it against the Compose schema), with
//     the same maxmemory rule;
//   - .dockerignore keeps test artefacts out of the build context and
//     everything the Dockerfile builds in it, as Docker's own pattern
//     matcher reads it.
//
// It is a module of its own so that these libraries stay out of the
// gateway's go.mod; `make test` runs it (make deploy-check):
//
//	cd deploy/validate && go test ./...
package validate
