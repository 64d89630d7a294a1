package cc

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Sentinels of the registry.
var (
	// ErrExists is returned when registering a name twice (Linux:
	// tcp_register_congestion_control returns -EEXIST).
	ErrExists = errors.New("already registered")
	// ErrUnknown is returned for a name nobody registered (Linux:
	// ENOENT from setsockopt TCP_CONGESTION).
	ErrUnknown = errors.New("unknown congestion control")
)

// Registry names the congestion-control algorithms of a stack, like
// Linux's tcp_cong_list: names are unique, lookups are by name, and the
// fallback algorithm (Reno in Linux, always built in) is registered by
// NewRegistry and cannot be removed. Safe for concurrent use.
type Registry struct {
	fallback string

	mu sync.RWMutex
	// +checklocks:mu
	byName map[string]Factory
	// +checklocks:mu
	names []string // registration order (tcp_available_congestion_control)
}

// NewRegistry returns a registry holding the fallback algorithm under
// name, e.g. NewRegistry("reno", reno.New).
func NewRegistry(name string, fallback Factory) (*Registry, error) {
	r := &Registry{fallback: name, byName: map[string]Factory{}}
	if err := r.Register(name, fallback); err != nil {
		return nil, err
	}
	return r, nil
}

// Register adds an algorithm. Names are lowercase identifiers of at most
// 15 bytes (Linux TCP_CA_NAME_MAX is 16 with the NUL).
func (r *Registry) Register(name string, f Factory) error {
	if err := validName(name); err != nil {
		return err
	}
	if f == nil {
		return fmt.Errorf("cc %q: nil factory", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byName[name]; ok {
		return fmt.Errorf("cc %q: %w", name, ErrExists)
	}
	r.byName[name] = f
	r.names = append(r.names, name)
	return nil
}

func validName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("cc name %q: want 1 to 15 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("cc name %q: character %q not allowed (want [a-z0-9_-])", name, c)
		}
	}
	return nil
}

// Lookup returns the factory registered under name.
func (r *Registry) Lookup(name string) (Factory, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	f, ok := r.byName[name]
	return f, ok
}

// New makes a fresh algorithm instance of name; the error wraps ErrUnknown
// and lists the available names.
func (r *Registry) New(name string) (Algorithm, error) {
	f, ok := r.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%w %q (available: %s)", ErrUnknown, name, strings.Join(r.Names(), " "))
	}
	return f(), nil
}

// Check returns nil if name is registered, else New's error.
func (r *Registry) Check(name string) error {
	if _, ok := r.Lookup(name); !ok {
		_, err := r.New(name)
		return err
	}
	return nil
}

// Fallback is the name of the algorithm that is always present.
func (r *Registry) Fallback() string { return r.fallback }

// Names lists the registered names in registration order.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]string(nil), r.names...)
}

// Unregister removes an algorithm; the fallback cannot be removed.
// Connections already using it keep their instances.
func (r *Registry) Unregister(name string) error {
	if name == r.fallback {
		return fmt.Errorf("cc %q: the fallback cannot be unregistered", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byName[name]; !ok {
		return fmt.Errorf("cc %q: %w", name, ErrUnknown)
	}
	delete(r.byName, name)
	for i, n := range r.names {
		if n == name {
			r.names = append(r.names[:i], r.names[i+1:]...)
			break
		}
	}
	return nil
}

// CwndLimitedSender is implemented by senders that know whether the
// flight is limited by cwnd (Linux tcp_is_cwnd_limited). Reno and CUBIC
// do not grow the window when it is not; a sender without it counts as
// always cwnd-limited.
type CwndLimitedSender interface {
	IsCwndLimited() bool
}

// IsCwndLimited asks s through CwndLimitedSender, true when s cannot tell.
func IsCwndLimited(s Sender) bool {
	if c, ok := s.(CwndLimitedSender); ok {
		return c.IsCwndLimited()
	}
	return true
}
