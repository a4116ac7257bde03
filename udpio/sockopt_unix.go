//go:build unix && (!linux || udpio_portable)

package udpio

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

func control(o Options) func(network, address string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		if !o.ReuseAddr {
			return nil
		}
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}); cerr != nil {
			return cerr
		}
		return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
	}
}
