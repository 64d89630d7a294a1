// Package appliance's repository root holds no code; it only carries the
// generate directive that builds the patched gVisor tree (third_party/gvisor,
// see docs/patches.md) before anything else compiles. It must import nothing
// from gVisor, because it runs while that tree is still missing.
package appliance

//go:generate go run ./tools/patchgvisor
