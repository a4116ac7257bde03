//go:build linux && !udpio_portable

package udpio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WriteToTTL implements TTLWriter with an IP_TTL control message (Linux 4.6 and
// later accept it on send), so the socket's TTL stays as it is for the other
// writers. It is meant for rare control datagrams: it allocates and makes one
// sendmsg call per datagram.
func (c *UDPConn) WriteToTTL(b []byte, addr netip.AddrPort, ttl int) error {
	ap, ok := ipv4(addr)
	if !ok {
		return c.opError("write", addr, ErrNotIPv4)
	}
	if ttl < 1 || ttl > 255 {
		return c.opError("write", addr, ErrBadTTL)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.IPPROTO_IP
	h.Type = unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], uint32(ttl))
	sa := &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	for retries := 0; ; retries++ {
		var serr error
		err := c.rc.Write(func(fd uintptr) bool {
			_, serr = unix.SendmsgN(int(fd), b, oob, sa, 0)
			return serr != unix.EAGAIN
		})
		if err == nil {
			err = serr
		}
		if err == nil {
			return nil
		}
		if retries == maxStaleRetries || !errors.Is(err, syscall.ECONNREFUSED) {
			return c.opError("write", addr, err)
		}
		c.writeTransient.Add(1)
	}
}
