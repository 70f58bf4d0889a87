package validate

import (
	"path/filepath"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// composeProject loads deploy/docker-compose.yml as `docker compose`
// does: schema validation, interpolation (with VERSION and REVISION
// unset), env files, paths resolved, consistency checks.
func composeProject(t *testing.T) *types.Project {
	t.Helper()
	file, err := filepath.Abs("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(t.Context(), types.ConfigDetails{
		WorkingDir:  filepath.Dir(file),
		ConfigFiles: []types.ConfigFile{{Filename: file}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("chat", true)
		o.ResolvePaths = true
	})
	if err != nil {
		t.Fatalf("deploy/docker-compose.yml does not load with the Compose loader: %v", err)
	}
	return p
}

// TestComposeFileLoads: the compose file is valid Compose, builds the
// gateway image from the repository with the version build args, tags it
// with the README's name, and caps Redis's memory below its limit.
func TestComposeFileLoads(t *testing.T) {
	p := composeProject(t)
	root, _ := filepath.Abs("../..")
	gateways := 0
	for name, s := range p.Services {
		if s.Build == nil {
			continue
		}
		gateways++
		if s.Build.Context != root {
			t.Errorf("%s builds from %s, want the repository root %s", name, s.Build.Context, root)
		}
		for _, arg := range []string{"VERSION", "REVISION"} {
			if _, ok := s.Build.Args[arg]; !ok {
				t.Errorf("%s does not pass the %s build arg (gateway -version, chat_build_info)", name, arg)
			}
		}
		if s.Image != imageName {
			t.Errorf("%s tags its image %q, want %q (README, Makefile, deploy/k8s)", name, s.Image, imageName)
		}
	}
	if gateways < 2 {
		t.Errorf("compose builds %d gateway services, want 2", gateways)
	}
	redis, ok := p.Services["redis"]
	if !ok {
		t.Fatal("compose has no redis service")
	}
	checkMaxmemory(t, "deploy/docker-compose.yml", redis.Command, int64(redis.MemLimit))
}
