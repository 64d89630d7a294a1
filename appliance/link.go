package appliance

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
)

// ownedLink hands a link endpoint to a stack, GSO passing through (so
// super-packets leave whole), and holds back its Close after keepOpen: a
// constructor that fails after attaching the endpoint destroys its stack,
// but the caller still owns the endpoint.
type ownedLink struct {
	netstack.WrappedLink
	noClose atomic.Bool
}

var (
	_ stack.LinkEndpoint = (*ownedLink)(nil)
	_ stack.GSOEndpoint  = (*ownedLink)(nil)
)

func newOwnedLink(ep stack.LinkEndpoint) *ownedLink {
	return &ownedLink{WrappedLink: netstack.WrappedLink{LinkEndpoint: ep}}
}

// Close implements stack.LinkEndpoint.
func (l *ownedLink) Close() {
	if !l.noClose.Load() {
		l.LinkEndpoint.Close()
	}
}

// keepOpen makes Close leave the wrapped endpoint open.
func (l *ownedLink) keepOpen() { l.noClose.Store(true) }
