package validate

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// imageName is the gateway image's one name: README's `docker build -t
// chat:1 .`, the Makefile's IMAGE, compose and deploy/k8s.
const imageName = "chat:1"

// imageRef matches what looks like a tagged gateway image name in prose
// and files: chat:1, chat-gateway:1, chat_gw:2.0.
var imageRef = regexp.MustCompile(`\bchat[\w.-]*:\d[\w.-]*\b`)

// TestOneImageName: README, docs, the Dockerfile, the Makefile and every
// deploy file call the gateway image by the same name.
func TestOneImageName(t *testing.T) {
	var files []string
	for _, g := range []string{"../../README.md", "../../Dockerfile", "../../Makefile", "../../docs/*.md",
		"../env.*", "../docker-compose.yml", "../k8s/*.yaml"} {
		m, _ := filepath.Glob(g)
		files = append(files, m...)
	}
	seen := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range imageRef.FindAllString(string(b), -1) {
			seen++
			if ref != imageName {
				t.Errorf("%s names the image %q; use %q everywhere", f, ref, imageName)
			}
		}
	}
	if seen < 5 {
		t.Errorf("found the image named only %d times; is imageRef still right?", seen)
	}
	dep, ok := k8sObjects(t)["Deployment/chat-gateway"].(*appsv1.Deployment)
	if !ok {
		t.Fatal("no Deployment chat-gateway in deploy/k8s")
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != imageName {
		t.Errorf("deploy/k8s runs image %q, want %q", img, imageName)
	}
}
