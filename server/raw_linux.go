package server

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/proto"
)

// RawIPv6 is an IPv6Output on a raw IPv6 socket (AF_INET6, SOCK_RAW,
// IPPROTO_RAW), which on Linux sends the caller's header as is, so packets
// leave with the client's Teredo source address. Opening it needs root or
// CAP_NET_RAW.
type RawIPv6 struct {
	mu     sync.RWMutex // held for reading by senders, for writing by Close
	fd     int
	closed bool
}

// OpenRawIPv6 opens the raw socket.
func OpenRawIPv6() (*RawIPv6, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("server: raw IPv6 socket: %w", err)
	}
	return &RawIPv6{fd: fd}, nil
}

// rawRetries bounds the retries of a send that failed with an error left
// on the socket by an ICMPv6 error about an earlier packet.
const rawRetries = 10

// WriteIPv6 implements IPv6Output.
func (r *RawIPv6) WriteIPv6(pkt []byte) error {
	if len(pkt) < proto.IPv6HeaderLen {
		return proto.ErrTruncated
	}
	sa := unix.SockaddrInet6{Addr: [16]byte(pkt[24:40])}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return unix.EBADF
	}
	var err error
	for range rawRetries {
		err = unix.Sendto(r.fd, pkt, unix.MSG_DONTWAIT, &sa)
		if !staleICMPError(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("server: raw IPv6 send to %v: %w", proto.Dst(pkt), err)
	}
	return nil
}

// staleICMPError reports errors a raw socket returns for an ICMPv6 error
// about an earlier packet, after which the send is tried again.
func staleICMPError(err error) bool {
	for _, e := range []unix.Errno{unix.ENETUNREACH, unix.EACCES, unix.EHOSTUNREACH, unix.ECONNREFUSED, unix.EMSGSIZE, unix.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Close closes the socket; later writes fail.
func (r *RawIPv6) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return unix.Close(r.fd)
}
