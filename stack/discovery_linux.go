package stack

import (
	"fmt"
	"net"
	"net/netip"
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

// linkSender returns a function that sends a datagram from the service
// socket out of a given interface: sendmsg with an IP_PKTINFO naming the
// interface, which for multicast takes precedence over IP_MULTICAST_IF, so
// concurrent sends need no lock and the socket's options stay as they are.
// The source address is the socket's bound one or, unbound, the
// interface's: IP_PKTINFO replaces the bound address with its own, so it
// carries the bound one.
func linkSender(sc syscallConn) (func(b []byte, to netip.AddrPort, ifindex int) error, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var local unix.Sockaddr
	if cerr := rc.Control(func(fd uintptr) { local, err = unix.Getsockname(int(fd)) }); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, os.NewSyscallError("getsockname", err)
	}
	bound, ok := local.(*unix.SockaddrInet4)
	if !ok {
		return nil, fmt.Errorf("service socket is not IPv4 (%T)", local)
	}
	return func(b []byte, to netip.AddrPort, ifindex int) error {
		if !to.Addr().Is4() {
			return fmt.Errorf("send to %v: not IPv4", to)
		}
		sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
		oob := unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: int32(ifindex), Spec_dst: bound.Addr})
		var serr error
		if err := rc.Write(func(fd uintptr) bool {
			_, serr = unix.SendmsgN(int(fd), b, oob, sa, 0)
			return serr != unix.EAGAIN
		}); err != nil {
			return err
		}
		if serr != nil {
			return os.NewSyscallError("sendmsg", serr)
		}
		return nil
	}, nil
}
