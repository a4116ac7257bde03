//go:build !unix

package udpio

import (
	"errors"
	"syscall"
)

func control(o Options) func(network, address string, rc syscall.RawConn) error {
	return func(_, _ string, _ syscall.RawConn) error {
		if o.ReuseAddr {
			// Windows' SO_REUSEADDR lets another process steal the port.
			return errors.New("udpio: ReuseAddr is not supported on this system")
		}
		return nil
	}
}
