package stack

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// discoveryControl lets the discovery socket share port 3544 with other
// clients' discovery sockets and with a co-located server that sets either
// option: Linux lets UDP sockets share a port when all set SO_REUSEADDR, or
// all set SO_REUSEPORT (same user). Multicast reaches every sharer either
// way; unicast to a shared port goes to one of them, which is why the
// discovery reader drops datagrams not sent to the group.
func discoveryControl(_, _ string, rc syscall.RawConn) error {
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			err = os.NewSyscallError("setsockopt SO_REUSEADDR", err)
			return
		}
		if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			err = os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// scopeMulticast sets the service socket's IP multicast TTL to 1, so that
// discovery bubbles never pass a router whatever the system default, and,
// when ifi is set, sends them out of that interface.
func scopeMulticast(sc syscallConn, ifi *net.Interface) error {
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := rc.Control(func(fd uintptr) {
		if err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, 1); err != nil {
			err = os.NewSyscallError("setsockopt IP_MULTICAST_TTL", err)
			return
		}
		if ifi != nil {
			err = unix.SetsockoptIPMreqn(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &unix.IPMreqn{Ifindex: int32(ifi.Index)})
			if err != nil {
				err = os.NewSyscallError("setsockopt IP_MULTICAST_IF", err)
			}
		}
	}); cerr != nil {
		return cerr
	}
	return err
}
