package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
	"go.yaml.in/yaml/v3"

	"github.com/chatgw/gateway/pkg/conn"
)

// The deploy files cannot be run here (no Docker engine, no cluster), so
// these tests check what can be checked against the binary: every
// variable they set exists and loads, ports, probes and the drain timings
// match, and the containers run as non-root.

// knownVars are the environment variables the gateway reads.
func knownVars() map[string]bool {
	known := map[string]bool{}
	for _, v := range envVars(reflect.ValueOf(defaultConfig())) {
		known[v.name] = true
	}
	return known
}

// parseEnvFile returns the variables an env file sets and, separately,
// its commented-out KEY=value lines.
func parseEnvFile(t *testing.T, path string) (set map[string]string, optional [][2]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	set = map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		commented := strings.HasPrefix(line, "#")
		body := strings.TrimSpace(strings.TrimPrefix(line, "#"))
		k, v, ok := strings.Cut(body, "=")
		if !ok || strings.ContainsAny(k, " \t") || k == "" || k != strings.ToUpper(k) {
			continue // prose
		}
		if commented {
			optional = append(optional, [2]string{k, v})
		} else {
			set[k] = v
		}
	}
	return set, optional
}

// TestEnvFilesLoad: each env file loads as it is and with any one of its
// commented lines uncommented, and names only variables the binary reads.
func TestEnvFilesLoad(t *testing.T) {
	known := knownVars()
	files, _ := filepath.Glob("../../deploy/env.*")
	if len(files) < 4 {
		t.Fatalf("found %d env files in deploy/, want development, production, cluster and sentinel", len(files))
	}
	for _, f := range files {
		set, optional := parseEnvFile(t, f)
		if len(optional) == 0 && !strings.HasSuffix(f, "env.compose") {
			t.Errorf("%s shows no optional settings", f)
		}
		check := func(env map[string]string, what string) {
			for k := range env {
				if !known[k] {
					t.Errorf("%s: %s is not a variable of the gateway (see gateway -h)", f, k)
				}
			}
			if _, err := loadConfig(t.Context(), envconfig.MapLookuper(env)); err != nil {
				t.Errorf("%s %s does not load: %v", f, what, err)
			}
		}
		check(set, "as it is")
		for _, kv := range optional {
			env := withEnv(set, map[string]string{kv[0]: kv[1]})
			check(env, "with "+kv[0]+" uncommented")
		}
	}
}

// TestDockerfileImage: the image builds this command, exposes the port
// the binary listens on, runs as non-root, health-checks with the binary,
// and defaults to production (docs/operations.md explains why).
func TestDockerfileImage(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"ENV ENVIRONMENT=production PORT=8000", "USER nonroot", "EXPOSE 8000",
		`CMD ["/gateway", "-healthcheck"]`, "deploy/env.production"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// Started with the image's environment alone, the gateway must stop
	// and name what is missing rather than run.
	var out bytes.Buffer
	code := run(t.Context(), nil, envconfig.MapLookuper(map[string]string{"ENVIRONMENT": "production", "PORT": "8000"}), io.Discard, &out, nil)
	if code != 2 || !strings.Contains(out.String(), "ALLOWED_HOSTS") || !strings.Contains(out.String(), "IP_REDIS") {
		t.Errorf("image defaults alone: exit %d, %q; want 2 naming ALLOWED_HOSTS and IP_REDIS", code, out.String())
	}
}

// compose is the part of a compose file the test reads.
type compose struct {
	Services map[string]struct {
		Command     []string `yaml:"command"`
		EnvFile     []string `yaml:"env_file"`
		Ports       []string `yaml:"ports"`
		Restart     string   `yaml:"restart"`
		StopGrace   string   `yaml:"stop_grace_period"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		DependsOn map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	} `yaml:"services"`
}

func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	redis, ok := c.Services["redis"]
	if !ok || redis.Healthcheck == nil || !strings.Contains(strings.Join(redis.Command, " "), "--appendonly yes") {
		t.Fatalf("compose redis: %+v; want a health check and AOF", redis)
	}
	gateways := 0
	for name, s := range c.Services {
		if !strings.HasPrefix(name, "gateway") {
			continue
		}
		gateways++
		if s.DependsOn["redis"].Condition != "service_healthy" || s.Restart == "" {
			t.Errorf("%s: depends_on %+v, restart %q; want redis service_healthy and a restart policy", name, s.DependsOn, s.Restart)
		}
		if len(s.Ports) != 1 || !strings.HasSuffix(s.Ports[0], ":8000") {
			t.Errorf("%s: ports %v; want one mapping to the gateway's 8000", name, s.Ports)
		}
		env := map[string]string{}
		for _, f := range s.EnvFile {
			set, _ := parseEnvFile(t, filepath.Join("../../deploy", f))
			env = withEnv(env, set)
		}
		cfg, err := loadConfig(t.Context(), envconfig.MapLookuper(env))
		if err != nil {
			t.Fatalf("%s: env_file %v does not load: %v", name, s.EnvFile, err)
		}
		grace, err := time.ParseDuration(s.StopGrace)
		if err != nil || grace <= cfg.DrainDelay+cfg.DrainWindow+cfg.ShutdownWait {
			t.Errorf("%s: stop_grace_period %q; want more than DRAIN_DELAY+DRAIN_WINDOW+SHUTDOWN_TIMEOUT (%v)",
				name, s.StopGrace, cfg.DrainDelay+cfg.DrainWindow+cfg.ShutdownWait)
		}
	}
	if gateways < 2 {
		t.Errorf("compose runs %d gateway nodes, want 2", gateways)
	}
}

// k8sObject is the part of a Kubernetes object the test reads.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		MinAvailable int `yaml:"minAvailable"`
		Ports        []struct {
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot bool `yaml:"runAsNonRoot"`
		RunAsUser    int  `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Containers []struct {
		Name    string   `yaml:"name"`
		Args    []string `yaml:"args"`
		EnvFrom []struct {
			ConfigMapRef struct {
				Name string `yaml:"name"`
			} `yaml:"configMapRef"`
		} `yaml:"envFrom"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		Lifecycle      struct {
			PreStop struct {
				Sleep struct {
					Seconds int `yaml:"seconds"`
				} `yaml:"sleep"`
			} `yaml:"preStop"`
		} `yaml:"lifecycle"`
		Resources struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
			Capabilities             struct {
				Drop []string `yaml:"drop"`
			} `yaml:"capabilities"`
		} `yaml:"securityContext"`
	} `yaml:"containers"`
}

type probe struct {
	HTTPGet struct {
		Path        string `yaml:"path"`
		Port        string `yaml:"port"`
		HTTPHeaders []struct {
			Name  string `yaml:"name"`
			Value string `yaml:"value"`
		} `yaml:"httpHeaders"`
	} `yaml:"httpGet"`
}

func readK8s(t *testing.T) map[string]k8sObject {
	t.Helper()
	objs := map[string]k8sObject{}
	files, _ := filepath.Glob("../../deploy/k8s/*.yaml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var o k8sObject
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			objs[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	return objs
}

func TestKubernetesManifests(t *testing.T) {
	objs := readK8s(t)
	cm, ok := objs["ConfigMap/chat-gateway"]
	if !ok {
		t.Fatal("no ConfigMap chat-gateway in deploy/k8s")
	}
	known := knownVars()
	for k := range cm.Data {
		if !known[k] {
			t.Errorf("ConfigMap sets %s, which the gateway does not read", k)
		}
	}
	cfg, err := loadConfig(t.Context(), envconfig.MapLookuper(cm.Data))
	if err != nil {
		t.Fatalf("the ConfigMap does not load: %v", err)
	}
	dep, ok := objs["Deployment/chat-gateway"]
	if !ok {
		t.Fatal("no Deployment chat-gateway")
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef.Name != "chat-gateway" {
		t.Errorf("envFrom %+v; want the chat-gateway ConfigMap", c.EnvFrom)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != cfg.Port || c.Ports[0].Name != "http" {
		t.Errorf("ports %+v; want http on %d, the gateway's PORT", c.Ports, cfg.Port)
	}
	for _, p := range []struct {
		what  string
		probe *probe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != "http" {
			t.Errorf("%s: %+v; want GET %s on port http", p.what, p.probe, p.path)
			continue
		}
		host := ""
		for _, h := range p.probe.HTTPGet.HTTPHeaders {
			if h.Name == "Host" {
				host = h.Value
			}
		}
		if !conn.NewHostList(cfg.AllowedHosts[:1]).Allows(host) {
			t.Errorf("%s sends Host %q, which ALLOWED_HOSTS (%v) refuses", p.what, host, cfg.AllowedHosts)
		}
	}
	drain := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second + cfg.DrainDelay + cfg.DrainWindow + cfg.ShutdownWait
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= drain || c.Lifecycle.PreStop.Sleep.Seconds == 0 {
		t.Errorf("terminationGracePeriodSeconds %v, preStop %ds; want a preStop and a grace period above preStop+DRAIN_DELAY+DRAIN_WINDOW+SHUTDOWN_TIMEOUT (%v)",
			grace, c.Lifecycle.PreStop.Sleep.Seconds, drain)
	}
	sc := c.SecurityContext
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser != 65532 || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || !sc.ReadOnlyRootFilesystem || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("securityContext: pod %+v, container %+v; want non-root 65532 (the image's nonroot), no escalation, read-only root, all capabilities dropped",
			pod.SecurityContext, sc)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v; want a CPU request and a memory limit", c.Resources)
	}
	svc, ok := objs["Service/chat-gateway"]
	if !ok || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != "http" {
		t.Errorf("Service chat-gateway: %+v; want one port targeting http", svc.Spec)
	}
	pdb, ok := objs["PodDisruptionBudget/chat-gateway"]
	if !ok || pdb.Spec.MinAvailable < 1 || !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) {
		t.Errorf("PodDisruptionBudget: %+v; want minAvailable >= 1 selecting the gateway pods", pdb.Spec)
	}
	redis, ok := objs["StatefulSet/chat-redis"]
	if !ok || len(redis.Spec.Template.Spec.Containers) != 1 ||
		!strings.Contains(strings.Join(redis.Spec.Template.Spec.Containers[0].Args, " "), "--appendonly yes") {
		t.Errorf("StatefulSet chat-redis: want one Redis container with AOF")
	}
	if cm.Data["IP_REDIS"] != "chat-redis" {
		t.Errorf("IP_REDIS is %q; want the chat-redis Service", cm.Data["IP_REDIS"])
	}
}
