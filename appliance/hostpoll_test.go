package appliance

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHostPollerAddRacesFinish: a relay's workers start from its
// endpoint's waiter entry, registered before hostPoller.add, so the relay
// can finish while add runs. Whichever order the two take, the socket
// must not stay registered (a watcher left behind keeps the relay and its
// map entry for the gateway's lifetime).
func TestHostPollerAddRacesFinish(t *testing.T) {
	p, err := newHostPoller(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.file.Close() }) // run never started: stop would wait for it
	relay := func() *tcpRelay {
		fds := nonblockingPair(t)
		fd, err := unix.Dup(fds[0])
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "pair")
		t.Cleanup(func() { f.Close() })
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		return &tcpRelay{host: &hostSock{f: f, rc: rc}}
	}
	watchers := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.watchers)
	}

	// finish first (closed stored, remove found no id), then add.
	r := relay()
	r.closed.Store(true)
	p.remove(r)
	if err := p.add(r); err != nil {
		t.Fatal(err)
	}
	if n := watchers(); n != 0 {
		t.Errorf("add after finish: %d watchers left, want 0", n)
	}

	// add first, then finish: remove finds the id.
	r = relay()
	if err := p.add(r); err != nil {
		t.Fatal(err)
	}
	if n := watchers(); n != 1 {
		t.Fatalf("after add: %d watchers, want 1", n)
	}
	r.closed.Store(true)
	p.remove(r)
	if n := watchers(); n != 0 {
		t.Errorf("finish after add: %d watchers left, want 0", n)
	}
}
