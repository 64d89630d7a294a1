// Command patchgvisor makes the patched gVisor tree the build uses: it
// copies the pinned gvisor.dev/gvisor module out of the module cache into
// third_party/gvisor and applies patches/*.patch in name order. go.mod
// replaces gvisor.dev/gvisor with that directory; `go generate ./...` (and
// so `make build`) runs this first. It is idempotent: a stamp file holding
// the version and the patches' sha256 makes a second run a no-op.
//
// It must not import gVisor: it runs while third_party/gvisor is missing.
// See docs/patches.md.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

const (
	module    = "gvisor.dev/gvisor"
	stampName = ".nsappliance-patched"
)

func main() {
	root := flag.String("root", ".", "repository root (holds go.mod and patches/)")
	force := flag.Bool("force", false, "rebuild third_party/gvisor even if the stamp matches")
	flag.Parse()
	if err := run(*root, *force); err != nil {
		fmt.Fprintf(os.Stderr, "patchgvisor: %v\n", err)
		os.Exit(1)
	}
}

func run(root string, force bool) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	version, err := pinnedVersion(filepath.Join(root, "go.mod"))
	if err != nil {
		return err
	}
	patches, err := filepath.Glob(filepath.Join(root, "patches", "*.patch"))
	if err != nil {
		return err
	}
	sort.Strings(patches)
	stamp, err := makeStamp(version, patches)
	if err != nil {
		return err
	}
	dst := filepath.Join(root, "third_party", "gvisor")
	if !force {
		if b, err := os.ReadFile(filepath.Join(dst, stampName)); err == nil && string(b) == stamp {
			return nil
		}
	}
	src, err := moduleDir(version)
	if err != nil {
		return err
	}
	// Build beside the destination and rename, so an interrupted run never
	// leaves a half-patched tree with a valid-looking layout.
	tmp := dst + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := copyTree(src, tmp); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	for _, p := range patches {
		if err := applyFile(tmp, p); err != nil {
			return fmt.Errorf("%s: %w (rebase it onto %s@%s, see docs/patches.md)", filepath.Base(p), err, module, version)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, stampName), []byte(stamp), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "patchgvisor: %s@%s + %d patches -> %s\n", module, version, len(patches), dst)
	return nil
}

// pinnedVersion reads the required gVisor version from go.mod.
func pinnedVersion(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == module && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s: no requirement on %s", gomod, module)
}

func makeStamp(version string, patches []string) (string, error) {
	h := sha256.New()
	for _, p := range patches {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%s@%s\npatches sha256 %s\n", module, version, hex.EncodeToString(h.Sum(nil))), nil
}

// moduleDir downloads the pristine module (if needed) and returns its
// directory in the module cache. It runs outside the main module so that the
// replace directive is ignored.
func moduleDir(version string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module+"@"+version)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	_ = json.Unmarshal(out, &info)
	if info.Error != "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", module, version, info.Error)
	}
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %v: %s", module, version, err, strings.TrimSpace(stderr.String()))
	}
	if info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: no directory reported", module, version)
	}
	return info.Dir, nil
}

// copyTree copies regular files and directories, making them writable
// (module cache files are read-only).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		t := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(t, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(t, b, 0o644)
	})
}

// applyFile applies a unified diff (as `diff -ruN a b` or `git diff` write
// it, applied like `patch -p1`) to the tree at dir. Hunks must match their
// context exactly; a hunk that moved is found by searching outwards from
// its stated line, as patch does without fuzz.
func applyFile(dir, patchPath string) error {
	b, err := os.ReadFile(patchPath)
	if err != nil {
		return err
	}
	files, err := parsePatch(string(b))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("no file diffs found")
	}
	for _, fd := range files {
		if err := fd.apply(dir); err != nil {
			return err
		}
	}
	return nil
}

type fileDiff struct {
	oldPath, newPath string // after stripping one component; "" for /dev/null
	hunks            []hunk
}

type hunk struct {
	oldStart int      // 1-based
	old, new []string // lines without their trailing newline
}

func stripPath(s string) string {
	s = strings.SplitN(s, "\t", 2)[0]
	if s == "/dev/null" {
		return ""
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func parsePatch(text string) ([]*fileDiff, error) {
	lines := strings.Split(text, "\n")
	var files []*fileDiff
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "--- ") || i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "+++ ") {
			continue
		}
		fd := &fileDiff{oldPath: stripPath(lines[i][4:]), newPath: stripPath(lines[i+1][4:])}
		i += 2
		for i < len(lines) && strings.HasPrefix(lines[i], "@@ ") {
			var os1, ol, ns, nl int
			h := lines[i]
			if _, err := fmt.Sscanf(h, "@@ -%d,%d +%d,%d @@", &os1, &ol, &ns, &nl); err != nil {
				ol, nl = 1, 1
				if _, err := fmt.Sscanf(h, "@@ -%d +%d @@", &os1, &ns); err != nil {
					if _, err := fmt.Sscanf(h, "@@ -%d,%d +%d @@", &os1, &ol, &ns); err != nil {
						if _, err := fmt.Sscanf(h, "@@ -%d +%d,%d @@", &os1, &ns, &nl); err != nil {
							return nil, fmt.Errorf("bad hunk header %q", h)
						}
					}
				}
			}
			hk := hunk{oldStart: os1}
			i++
			for ol > 0 || nl > 0 {
				if i >= len(lines) {
					return nil, fmt.Errorf("%s: truncated hunk %q", fd.newPath, h)
				}
				l := lines[i]
				i++
				if strings.HasPrefix(l, `\`) { // "\ No newline at end of file"
					continue
				}
				if l == "" {
					l = " " // some editors strip the blank context line's space
				}
				switch l[0] {
				case ' ':
					hk.old = append(hk.old, l[1:])
					hk.new = append(hk.new, l[1:])
					ol--
					nl--
				case '-':
					hk.old = append(hk.old, l[1:])
					ol--
				case '+':
					hk.new = append(hk.new, l[1:])
					nl--
				default:
					return nil, fmt.Errorf("%s: bad hunk line %q", fd.newPath, l)
				}
			}
			if ol != 0 || nl != 0 {
				return nil, fmt.Errorf("%s: hunk %q line counts do not add up", fd.newPath, h)
			}
			fd.hunks = append(fd.hunks, hk)
		}
		i--
		files = append(files, fd)
	}
	return files, nil
}

func (fd *fileDiff) apply(dir string) error {
	var lines []string
	trailingNL := true
	if fd.oldPath != "" {
		b, err := os.ReadFile(filepath.Join(dir, fd.oldPath))
		if err != nil {
			return err
		}
		s := string(b)
		trailingNL = strings.HasSuffix(s, "\n")
		lines = strings.Split(strings.TrimSuffix(s, "\n"), "\n")
		if s == "" {
			lines = nil
		}
	}
	offset := 0 // how far earlier hunks shifted line numbers
	for n, h := range fd.hunks {
		base := max(h.oldStart-1, 0) // oldStart 0: a new file's single hunk
		if len(h.old) == 0 && h.oldStart > 0 {
			base++ // pure insertion after line oldStart
		}
		want := base + offset
		at := -1
		for d := 0; d <= len(lines); d++ {
			if matchAt(lines, h.old, want-d) {
				at = want - d
				break
			}
			if matchAt(lines, h.old, want+d) {
				at = want + d
				break
			}
		}
		if at < 0 {
			return fmt.Errorf("%s: hunk %d (line %d) does not apply", fd.newPath, n+1, h.oldStart)
		}
		out := append([]string{}, lines[:at]...)
		out = append(out, h.new...)
		lines = append(out, lines[at+len(h.old):]...)
		offset = at - base + len(h.new) - len(h.old)
	}
	if fd.newPath == "" {
		return os.Remove(filepath.Join(dir, fd.oldPath))
	}
	s := strings.Join(lines, "\n")
	if trailingNL && len(lines) > 0 {
		s += "\n"
	}
	p := filepath.Join(dir, fd.newPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(s), 0o644)
}

func matchAt(lines, want []string, at int) bool {
	if at < 0 || at+len(want) > len(lines) {
		return false
	}
	for i, w := range want {
		if lines[at+i] != w {
			return false
		}
	}
	return true
}
