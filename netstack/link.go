package netstack

import "gvisor.dev/gvisor/pkg/tcpip/stack"

// WrappedLink embeds a link endpoint and passes its GSO abilities through.
// A wrapper that embeds WrappedLink and overrides only what it changes
// (Attach, WritePackets, Close) keeps the wrapped endpoint's offloads, so
// netstack still sends 64 KiB TSO segments through it.
type WrappedLink struct {
	stack.LinkEndpoint
}

var _ stack.GSOEndpoint = WrappedLink{}

// GSOMaxSize implements stack.GSOEndpoint for the wrapped endpoint.
func (w WrappedLink) GSOMaxSize() uint32 {
	if g, ok := w.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.GSOMaxSize()
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint for the wrapped endpoint.
func (w WrappedLink) SupportedGSO() stack.SupportedGSO {
	if g, ok := w.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return stack.GSONotSupported
}
