package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestApplyFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.go"), []byte("one\ntwo\nthree\nfour\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	patch := `Header text is ignored.

diff -ruN a/a.go b/a.go
--- a/a.go
+++ b/a.go
@@ -2,2 +2,3 @@
 two
+two and a half
 three
diff -ruN a/sub/new.go b/sub/new.go
--- /dev/null
+++ b/sub/new.go
@@ -0,0 +1,2 @@
+package sub
+// new
`
	pp := filepath.Join(dir, "x.patch")
	if err := os.WriteFile(pp, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := applyFile(dir, pp); err != nil {
		t.Fatalf("applyFile: %v", err)
	}
	for path, want := range map[string]string{
		"a.go":       "one\ntwo\ntwo and a half\nthree\nfour\n",
		"sub/new.go": "package sub\n// new\n",
	} {
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	// The same patch again no longer applies (its context is gone).
	if err := os.WriteFile(filepath.Join(dir, "a.go"), []byte("other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := applyFile(dir, pp); err == nil {
		t.Error("applyFile on changed context: want error")
	}
}
