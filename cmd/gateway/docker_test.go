package main

import (
	"os"
	"strings"
	"testing"

	"github.com/sethvargo/go-envconfig"
)

// TestDockerfileMatchesBinary checks what can be checked of the image
// without a Docker engine: it builds this command, exposes the default
// port and health-checks with the binary's own -healthcheck flag.
func TestDockerfileMatchesBinary(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		"go build", "./cmd/gateway",
		"EXPOSE 8000",
		`HEALTHCHECK`, `"/gateway", "-healthcheck"`,
		`ENTRYPOINT ["/gateway"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	cfg, err := loadConfig(t.Context(), envconfig.MapLookuper(nil))
	if err == nil && cfg.Port != 8000 {
		t.Errorf("default PORT is %d; the Dockerfile exposes 8000", cfg.Port)
	}
	for _, f := range []string{"../../deploy/env.development", "../../deploy/env.production"} {
		env := map[string]string{}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
				env[k] = v
			}
		}
		if _, err := loadConfig(t.Context(), envconfig.MapLookuper(env)); err != nil {
			t.Errorf("%s does not load: %v", f, err)
		}
	}
}
