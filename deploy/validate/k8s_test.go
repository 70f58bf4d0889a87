package validate

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// k8sObjects decodes every document of deploy/k8s/*.yaml strictly into
// the API types: an unknown field, a duplicate key, a wrong type or an
// unregistered kind fails the test, naming the file and the document.
func k8sObjects(t *testing.T) map[string]runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	files, err := filepath.Glob("../k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/k8s/*.yaml found (%v)", err)
	}
	objs := map[string]runtime.Object{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for i := 1; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, gvk, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				t.Errorf("%s document %d does not decode strictly as a Kubernetes object: %v "+
					"(fix the field, or register its API group in k8sObjects)", f, i, err)
				continue
			}
			name := ""
			if m, ok := obj.(interface{ GetName() string }); ok {
				name = m.GetName()
			}
			objs[gvk.Kind+"/"+name] = obj
		}
	}
	return objs
}

// TestKubernetesManifestsDecodeStrictly: every object of deploy/k8s is a
// valid instance of its API type, and the expected objects are there.
func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	objs := k8sObjects(t)
	for _, want := range []string{"ConfigMap/chat-gateway", "Deployment/chat-gateway", "Service/chat-gateway",
		"PodDisruptionBudget/chat-gateway", "Service/chat-redis", "StatefulSet/chat-redis"} {
		if _, ok := objs[want]; !ok {
			t.Errorf("deploy/k8s has no %s", want)
		}
	}
}

// TestKubernetesRedisMaxmemory: the Redis container caps its data with
// maxmemory and noeviction, below its memory limit with room for an AOF
// rewrite (at most 75 % of it).
func TestKubernetesRedisMaxmemory(t *testing.T) {
	sts, ok := k8sObjects(t)["StatefulSet/chat-redis"].(*appsv1.StatefulSet)
	if !ok {
		t.Fatal("no StatefulSet chat-redis in deploy/k8s")
	}
	c := sts.Spec.Template.Spec.Containers[0]
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatalf("container %s has no memory limit", c.Name)
	}
	checkMaxmemory(t, "deploy/k8s/redis.yaml", append(slices.Clone(c.Command), c.Args...), limit.Value())
}

// TestKubernetesMinimumVersion: a manifest that uses the preStop sleep
// action says that it needs Kubernetes 1.30.
func TestKubernetesMinimumVersion(t *testing.T) {
	dep, ok := k8sObjects(t)["Deployment/chat-gateway"].(*appsv1.Deployment)
	if !ok {
		t.Fatal("no Deployment chat-gateway in deploy/k8s")
	}
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
			continue
		}
		b, err := os.ReadFile("../k8s/gateway.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "Kubernetes 1.30 or later") {
			t.Errorf("deploy/k8s/gateway.yaml uses preStop sleep but does not say it needs Kubernetes 1.30 or later")
		}
	}
}
