package netstack

import (
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// TCPIPError carries a tcpip.Error as a Go error; reach it with errors.As.
type TCPIPError struct {
	Op  string
	Err tcpip.Error
}

func (e *TCPIPError) Error() string { return fmt.Sprintf("%s: %s", e.Op, e.Err) }

// Error converts a tcpip.Error to an error naming op. It returns nil for a
// nil tcpip.Error.
func Error(op string, err tcpip.Error) error {
	if err == nil {
		return nil
	}
	return &TCPIPError{Op: op, Err: err}
}

// ErrUnknownSysctl is returned for a key the stack does not have.
var ErrUnknownSysctl = errors.New("unknown sysctl key")

// ErrReadOnly is returned when writing a read-only key.
var ErrReadOnly = errors.New("read-only sysctl key")
