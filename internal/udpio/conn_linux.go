//go:build linux && !udpio_portable

package udpio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDPConn is a Conn on a UDP/IPv4 socket. On Linux, batches are moved with
// recvmmsg and sendmmsg through the Go netpoller, so deadlines and Close
// work and a blocked ReadBatch parks its goroutine, not a thread.
type UDPConn struct {
	pc    *net.UDPConn
	rc    syscall.RawConn
	laddr netip.AddrPort

	rmu sync.Mutex // guards r and serializes readers
	r   mmsgs
	wmu sync.Mutex // guards w and serializes batch writers
	w   mmsgs

	readTransient  atomic.Uint64
	writeTransient atomic.Uint64
	truncated      atomic.Uint64
}

var _ Conn = (*UDPConn)(nil)

// maxStaleRetries bounds how often one WriteBatch retries after a stale
// ICMP error of an earlier datagram, so an ICMP flood cannot pin a writer.
const maxStaleRetries = 16

// mmsgs holds the preallocated kernel-facing arrays of one direction and the
// state of the RawConn callback working on them. It is reused for every
// call so that a batch allocates nothing.
type mmsgs struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4

	fn func(fd uintptr) bool // the callback, bound once so calls don't allocate

	start, end int // hdrs[start:end] remain to be moved
	errno      syscall.Errno
	retries    int
}

func newMmsgs(n int) mmsgs {
	return mmsgs{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
	}
}

// prepare points hdrs[:len(msgs)] at the buffers of msgs. For writes it
// also encodes destinations and stops before the first one that is not
// IPv4, returning how many messages are ready.
func (m *mmsgs) prepare(msgs []Message, write bool) int {
	if len(msgs) > len(m.hdrs) {
		m.hdrs = make([]unix.Mmsghdr, len(msgs))
		m.names = make([]unix.RawSockaddrInet4, len(msgs))
	}
	niov := 0
	for i := range msgs {
		niov += len(msgs[i].Buffers)
	}
	if niov > len(m.iovs) {
		m.iovs = make([]unix.Iovec, niov)
	}
	off := 0
	for i := range msgs {
		if write {
			ap, ok := ipv4(msgs[i].Addr)
			if !ok {
				return i
			}
			putSockaddr(&m.names[i], ap)
		}
		h := &m.hdrs[i]
		h.Hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet4
		h.Hdr.Flags = 0
		h.Len = 0
		bufs := msgs[i].Buffers
		if len(bufs) == 0 {
			h.Hdr.Iov = nil
			h.Hdr.SetIovlen(0)
			continue
		}
		h.Hdr.Iov = &m.iovs[off]
		h.Hdr.SetIovlen(len(bufs))
		for _, b := range bufs {
			iov := &m.iovs[off]
			iov.Base = unsafe.SliceData(b)
			iov.SetLen(len(b))
			off++
		}
	}
	return len(msgs)
}

// Listen opens a UDP/IPv4 socket bound to laddr (the zero AddrPort means any
// address and an ephemeral port). The socket never sets the Don't Fragment
// bit (IP_PMTUDISC_DONT), as RFC 4380 §5.1.2 requires of Teredo.
func Listen(laddr netip.AddrPort, opts Options) (*UDPConn, error) {
	opts = opts.withDefaults()
	la, err := listenAddr(laddr)
	if err != nil {
		return nil, err
	}
	var optErr error
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		if err := rc.Control(func(fd uintptr) { optErr = setSockopts(int(fd), opts) }); err != nil {
			return err
		}
		return optErr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", la.String())
	if err != nil {
		return nil, fmt.Errorf("udpio: listen %v: %w", la, err)
	}
	c, err := newUDPConn(pc.(*net.UDPConn), opts.BatchSize)
	if err != nil {
		pc.Close()
		return nil, err
	}
	return c, nil
}

func newUDPConn(pc *net.UDPConn, batch int) (*UDPConn, error) {
	rc, err := pc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpio: %w", err)
	}
	c := &UDPConn{
		pc:    pc,
		rc:    rc,
		laddr: localAddrPort(pc),
		r:     newMmsgs(batch),
		w:     newMmsgs(batch),
	}
	c.r.fn = c.recvmmsg
	c.w.fn = c.sendmmsg
	return c, nil
}

func setSockopts(fd int, o Options) error {
	if o.ReuseAddr {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
		}
	}
	// RFC 4380 §5.1.2: Teredo never sets DF; the IPv6 layer handles MTU.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT); err != nil {
		return os.NewSyscallError("setsockopt IP_MTU_DISCOVER", err)
	}
	if err := setBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, o.ReadBuffer); err != nil {
		return os.NewSyscallError("setsockopt SO_RCVBUF", err)
	}
	if err := setBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, o.WriteBuffer); err != nil {
		return os.NewSyscallError("setsockopt SO_SNDBUF", err)
	}
	return nil
}

// setBuffer sets a socket buffer size, first with the privileged option
// that ignores net.core.{r,w}mem_max, then with the capped one.
func setBuffer(fd, force, capped, size int) error {
	if size < 0 {
		return nil
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) == nil {
		return nil
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, capped, size)
}

// ReadBatch implements Conn with recvmmsg.
func (c *UDPConn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if len(msgs) > MaxBatch {
		msgs = msgs[:MaxBatch]
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	m := &c.r
	m.prepare(msgs, false)
	n := 0
	for n == 0 {
		m.start, m.end, m.errno = 0, len(msgs), 0
		if err := c.rc.Read(m.fn); err != nil {
			return 0, renameOp(err, "read")
		}
		if m.errno != 0 {
			return 0, c.opError("read", netip.AddrPort{}, os.NewSyscallError("recvmmsg", m.errno))
		}
		n = m.start
	}
	for i := range n {
		h := &m.hdrs[i]
		msgs[i].N = int(h.Len)
		msgs[i].Addr = sockaddrAddrPort(&m.names[i], h.Hdr.Namelen)
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			c.truncated.Add(1)
		}
	}
	return n, nil
}

// recvmmsg is the RawConn read callback. It reports false only on EAGAIN,
// which parks the goroutine in the netpoller until the socket is readable.
// A transient error leaves m.start at 0 so that ReadBatch calls it again.
func (c *UDPConn) recvmmsg(fd uintptr) bool {
	m := &c.r
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(m.end), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == 0 && n > 0:
			m.start = int(n)
			return true
		case errno == 0, errno == unix.EAGAIN: // nothing yet: wait, don't spin
			return false
		case errno == unix.EINTR:
			continue
		case readTransient(errno):
			c.readTransient.Add(1)
			return true
		default:
			m.errno = errno
			return true
		}
	}
}

// readTransient reports errors a receive returns on behalf of the network
// (the socket's pending error, set by ICMP for an earlier send): they say
// nothing about the datagrams still queued, so the reader goes on.
func readTransient(errno syscall.Errno) bool {
	switch errno {
	case unix.ECONNREFUSED, unix.ECONNRESET, unix.EHOSTUNREACH, unix.ENETUNREACH,
		unix.EHOSTDOWN, unix.ENETDOWN, unix.ENONET, unix.ENOPROTOOPT, unix.EPROTO,
		unix.EMSGSIZE, unix.EACCES:
		return true
	}
	return false
}

// WriteBatch implements Conn with sendmmsg, looping until the kernel has
// taken every datagram or one fails.
func (c *UDPConn) WriteBatch(msgs []Message) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	m := &c.w
	m.retries = 0
	sent := 0
	for sent < len(msgs) {
		chunk := msgs[sent:]
		if len(chunk) > MaxBatch {
			chunk = chunk[:MaxBatch]
		}
		ready := m.prepare(chunk, true)
		if ready > 0 {
			m.start, m.end, m.errno = 0, ready, 0
			err := c.rc.Write(m.fn)
			for i := range m.start {
				chunk[i].N = int(m.hdrs[i].Len)
			}
			sent += m.start
			if err != nil {
				return sent, renameOp(err, "write")
			}
			if m.errno != 0 {
				return sent, c.opError("write", msgs[sent].Addr, os.NewSyscallError("sendmmsg", m.errno))
			}
		}
		if ready < len(chunk) {
			return sent, c.opError("write", msgs[sent].Addr, ErrNotIPv4)
		}
	}
	return sent, nil
}

// sendmmsg is the RawConn write callback. sendmmsg may take only part of
// the batch (it stops at the first failing datagram, or when the socket
// buffer fills), so it loops, waiting for writability on EAGAIN.
func (c *UDPConn) sendmmsg(fd uintptr) bool {
	m := &c.w
	for m.start < m.end {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&m.hdrs[m.start])), uintptr(m.end-m.start), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == 0 && n > 0:
			m.start += int(n)
		case errno == 0:
			m.errno = unix.EIO // the kernel took nothing and said nothing; don't spin
			return true
		case errno == unix.EAGAIN:
			return false
		case errno == unix.EINTR:
		case errno == unix.ECONNREFUSED && m.retries < maxStaleRetries:
			// The pending error of an earlier datagram's ICMP port
			// unreachable, not this datagram's: it was not sent, retry it.
			m.retries++
			c.writeTransient.Add(1)
		default:
			m.errno = errno
			return true
		}
	}
	return true
}

// WriteTo implements Conn.
func (c *UDPConn) WriteTo(b []byte, addr netip.AddrPort) error {
	ap, ok := ipv4(addr)
	if !ok {
		return c.opError("write", addr, ErrNotIPv4)
	}
	for retries := 0; ; retries++ {
		_, err := c.pc.WriteToUDPAddrPort(b, ap)
		if err == nil || retries == maxStaleRetries || !errors.Is(err, unix.ECONNREFUSED) {
			return err
		}
		c.writeTransient.Add(1)
	}
}

// LocalAddr implements Conn.
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.laddr }

// SetReadDeadline implements Conn.
func (c *UDPConn) SetReadDeadline(t time.Time) error { return c.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for WriteBatch and WriteTo calls
// blocked on a full socket buffer.
func (c *UDPConn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }

// Close implements Conn.
func (c *UDPConn) Close() error { return c.pc.Close() }

// SyscallConn gives access to the socket, for options this package does
// not set.
func (c *UDPConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Stats returns counters of events handled without returning an error.
func (c *UDPConn) Stats() Stats {
	return Stats{
		ReadTransientErrors:  c.readTransient.Load(),
		WriteTransientErrors: c.writeTransient.Load(),
		Truncated:            c.truncated.Load(),
	}
}

// renameOp reports the RawConn's "raw-read"/"raw-write" errors as the
// reads and writes they are to the caller.
func renameOp(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

func putSockaddr(sa *unix.RawSockaddrInet4, ap netip.AddrPort) {
	sa.Family = unix.AF_INET
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	sa.Addr = ap.Addr().As4()
}

func sockaddrAddrPort(sa *unix.RawSockaddrInet4, namelen uint32) netip.AddrPort {
	if namelen < unix.SizeofSockaddrInet4 || sa.Family != unix.AF_INET {
		return netip.AddrPort{}
	}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}
