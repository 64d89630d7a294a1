package emulate

import (
	"sync"
	"time"
)

// Clock is the time source of a Link. The zero Options use the system's
// monotonic clock; tests use a ManualClock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Timer returns a channel that receives once Now has reached at, and
	// a function that releases the timer if it is no longer wanted.
	Timer(at time.Time) (<-chan time.Time, func())
}

// systemClock is time.Now (monotonic) and Go timers, which fire up to about
// a millisecond late; the directions schedule by absolute times, so the
// lateness does not add up.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) Timer(at time.Time) (<-chan time.Time, func()) {
	t := time.NewTimer(time.Until(at))
	return t.C, func() { t.Stop() }
}

// ManualClock is a Clock that moves only when Advance is called, for
// deterministic tests. It is safe for concurrent use.
type ManualClock struct {
	mu sync.Mutex
	// +checklocks:mu
	now time.Time
	// +checklocks:mu
	waiters map[*manualTimer]struct{}
}

type manualTimer struct {
	at time.Time
	c  chan time.Time
}

// NewManualClock returns a ManualClock reading start.
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start, waiters: map[*manualTimer]struct{}{}}
}

// Now implements Clock.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Timer implements Clock.
func (c *ManualClock) Timer(at time.Time) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{at: at, c: make(chan time.Time, 1)}
	if !at.After(c.now) {
		t.c <- c.now
		return t.c, func() {}
	}
	c.waiters[t] = struct{}{}
	return t.c, func() {
		c.mu.Lock()
		delete(c.waiters, t)
		c.mu.Unlock()
	}
}

// Advance moves the clock forward by d and fires the timers that are due.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.waiters {
		if !t.at.After(c.now) {
			t.c <- c.now
			delete(c.waiters, t)
		}
	}
}

// Waiters counts the timers not yet fired: a test can wait for a
// direction's goroutine to go back to sleep.
func (c *ManualClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}
