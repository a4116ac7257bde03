//go:build linux && !udpio_portable

package udpio

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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

	gso atomic.Bool // UDP_SEGMENT sends are on and not yet refused
	gro bool        // UDP_GRO is set on the socket

	readTransient  atomic.Uint64
	writeTransient atomic.Uint64
	truncated      atomic.Uint64
	gsoFallbacks   atomic.Uint64
}

var _ Conn = (*UDPConn)(nil)

// Limits of one UDP_SEGMENT send: the kernel refuses more segments than
// UDP_MAX_SEGMENTS (64 before Linux 6.9) or a payload longer than one IPv4
// UDP datagram, and a message of more than UIO_MAXIOV buffers.
const (
	maxGSOSegments = 64
	maxGSOBytes    = MaxGROSize
	maxIOV         = 1024
)

// ctrlSpace is the control buffer reserved per message: room for one
// UDP_SEGMENT (uint16) or UDP_GRO (int) control message.
var ctrlSpace = unix.CmsgSpace(4)

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
	ctrl  []byte // ctrlSpace bytes per header, for GSO and GRO
	runs  []int  // for writes: how many messages each header carries

	fn func(fd uintptr) bool // the callback, bound once so calls don't allocate

	start, end int // hdrs[start:end] remain to be moved
	errno      syscall.Errno
	retries    int
}

func newMmsgs(n int) mmsgs {
	var m mmsgs
	m.grow(n, n)
	return m
}

// grow makes room for n headers and niov buffers.
func (m *mmsgs) grow(n, niov int) {
	if n > len(m.hdrs) {
		m.hdrs = make([]unix.Mmsghdr, n)
		m.names = make([]unix.RawSockaddrInet4, n)
		m.ctrl = make([]byte, n*ctrlSpace)
		m.runs = make([]int, n)
	}
	if niov > len(m.iovs) {
		m.iovs = make([]unix.Iovec, niov)
	}
}

func countIOV(msgs []Message) int {
	n := 0
	for i := range msgs {
		n += len(msgs[i].Buffers)
	}
	return n
}

// setHeader points header i at its address slot and at bufs, stored from
// m.iovs[off] on, and returns the next free iovec.
func (m *mmsgs) setHeader(i, off int, bufs [][]byte) int {
	h := &m.hdrs[i]
	h.Hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
	h.Hdr.Namelen = unix.SizeofSockaddrInet4
	h.Hdr.Flags = 0
	h.Hdr.Control = nil
	h.Hdr.SetControllen(0)
	h.Len = 0
	if len(bufs) == 0 {
		h.Hdr.Iov = nil
		h.Hdr.SetIovlen(0)
		return off
	}
	h.Hdr.Iov = &m.iovs[off]
	h.Hdr.SetIovlen(len(bufs))
	return m.putIOV(off, bufs)
}

func (m *mmsgs) putIOV(off int, bufs [][]byte) int {
	for _, b := range bufs {
		iov := &m.iovs[off]
		iov.Base = unsafe.SliceData(b)
		iov.SetLen(len(b))
		off++
	}
	return off
}

// prepareRead points hdrs[:len(msgs)] at the buffers of msgs, with room for
// a UDP_GRO control message if gro.
func (m *mmsgs) prepareRead(msgs []Message, gro bool) {
	m.grow(len(msgs), countIOV(msgs))
	off := 0
	for i := range msgs {
		off = m.setHeader(i, off, msgs[i].Buffers)
		if gro {
			h := &m.hdrs[i]
			h.Hdr.Control = &m.ctrl[i*ctrlSpace]
			h.Hdr.SetControllen(ctrlSpace)
		}
	}
}

// prepareWrite encodes msgs into headers, one per message or, with gso,
// one per run of messages that a single UDP_SEGMENT send can carry. It
// stops before the first destination that is not IPv4 and returns the
// number of headers and of messages they carry.
func (m *mmsgs) prepareWrite(msgs []Message, gso bool) (hdrs, ready int) {
	m.grow(len(msgs), countIOV(msgs))
	off := 0
	for ready < len(msgs) {
		ap, ok := ipv4(msgs[ready].Addr)
		if !ok {
			break
		}
		putSockaddr(&m.names[hdrs], ap)
		run, seg := 1, 0
		if gso {
			run, seg = gsoRun(msgs[ready:])
		}
		start := off
		off = m.setHeader(hdrs, off, msgs[ready].Buffers)
		for _, msg := range msgs[ready+1 : ready+run] {
			off = m.putIOV(off, msg.Buffers)
		}
		if run > 1 {
			h := &m.hdrs[hdrs]
			h.Hdr.Iov = &m.iovs[start]
			h.Hdr.SetIovlen(off - start)
			cm := m.ctrl[hdrs*ctrlSpace : (hdrs+1)*ctrlSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&cm[0]))
			ch.Level = unix.SOL_UDP
			ch.Type = unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&cm[unix.CmsgLen(0)])) = uint16(seg)
			h.Hdr.Control = &cm[0]
			h.Hdr.SetControllen(unix.CmsgSpace(2))
		}
		m.runs[hdrs] = run
		hdrs++
		ready += run
	}
	return hdrs, ready
}

// gsoRun returns how many messages from msgs[0] on one UDP_SEGMENT send
// can carry, and their segment size: same destination, the size of the
// first, or smaller for the last, within the kernel's limits.
func gsoRun(msgs []Message) (run, seg int) {
	seg = datagramLen(msgs[0].Buffers)
	if seg == 0 {
		return 1, 0
	}
	addr := msgs[0].Addr
	total, niov := seg, len(msgs[0].Buffers)
	run = 1
	for run < len(msgs) && run < maxGSOSegments {
		m := &msgs[run]
		n := datagramLen(m.Buffers)
		if m.Addr != addr || n == 0 || n > seg || total+n > maxGSOBytes || niov+len(m.Buffers) > maxIOV {
			break
		}
		total += n
		niov += len(m.Buffers)
		run++
		if n < seg {
			break // only the last segment may be short
		}
	}
	return run, seg
}

// segmentSize returns the UDP_GRO segment size the kernel reported in the
// control messages of h, or 0.
func segmentSize(h *unix.Msghdr) int {
	cl := int(h.Controllen)
	if h.Control == nil || cl < unix.CmsgLen(4) {
		return 0
	}
	b := unsafe.Slice(h.Control, cl)
	for len(b) >= unix.SizeofCmsghdr {
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(ch.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return 0
		}
		if ch.Level == unix.SOL_UDP && ch.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&b[unix.CmsgLen(0)])))
		}
		sp := unix.CmsgSpace(l - unix.CmsgLen(0))
		if sp > len(b) {
			return 0
		}
		b = b[sp:]
	}
	return 0
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
	// The offloads are optimisations: a kernel without them (before 4.18
	// and 5.0) refuses the option and the socket works without.
	c.rc.Control(func(fd uintptr) {
		if !opts.DisableGSO {
			_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
			c.gso.Store(err == nil)
		}
		if !opts.DisableGRO {
			c.gro = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
		}
	})
	return c, nil
}

// Offload reports whether GSO sends and GRO receives are in use: not
// disabled in Options, supported by the kernel, and (for GSO) not refused since.
func (c *UDPConn) Offload() (gso, gro bool) { return c.gso.Load(), c.gro }

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
	m.prepareRead(msgs, c.gro)
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
		msgs[i].SegmentSize = 0
		if c.gro {
			msgs[i].SegmentSize = segmentSize(&h.Hdr)
		}
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
// taken every datagram or one fails. With GSO, runs of datagrams go as one
// UDP_SEGMENT send each; if the kernel refuses one, its datagrams are sent
// again one by one, so the caller sees the errors of single datagrams.
func (c *UDPConn) WriteBatch(msgs []Message) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	m := &c.w
	m.retries = 0
	gso := c.gso.Load()
	sent := 0
	for sent < len(msgs) {
		chunk := msgs[sent:]
		if len(chunk) > MaxBatch {
			chunk = chunk[:MaxBatch]
		}
		hdrs, ready := m.prepareWrite(chunk, gso)
		if hdrs > 0 {
			m.start, m.end, m.errno = 0, hdrs, 0
			err := c.rc.Write(m.fn)
			done := 0
			for i := range m.start {
				if run := m.runs[i]; run > 1 {
					for j := done; j < done+run; j++ {
						chunk[j].N = datagramLen(chunk[j].Buffers)
					}
					done += run
					continue
				}
				chunk[done].N = int(m.hdrs[i].Len)
				done++
			}
			sent += done
			if err != nil {
				return sent, renameOp(err, "write")
			}
			if m.errno != 0 {
				if m.runs[m.start] > 1 {
					// The kernel refused the coalesced send: retry the
					// rest of the batch without it.
					c.gsoFallbacks.Add(1)
					gso = false
					if gsoRefused(m.errno) {
						c.gso.Store(false)
					}
					continue
				}
				return sent, c.opError("write", msgs[sent].Addr, os.NewSyscallError("sendmmsg", m.errno))
			}
		}
		if ready < len(chunk) {
			return sent, c.opError("write", msgs[sent].Addr, ErrNotIPv4)
		}
	}
	return sent, nil
}

// gsoRefused reports errors by which the kernel says it cannot segment
// on this socket or route at all, rather than something about the data.
func gsoRefused(errno syscall.Errno) bool {
	switch errno {
	case unix.EIO, unix.EINVAL, unix.ENOPROTOOPT, unix.EOPNOTSUPP:
		return true
	}
	return false
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

// SyscallConn gives access to the socket, for options this package does
// not set.
func (c *UDPConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Stats returns counters of events handled without returning an error.
func (c *UDPConn) Stats() Stats {
	return Stats{
		ReadTransientErrors:  c.readTransient.Load(),
		WriteTransientErrors: c.writeTransient.Load(),
		Truncated:            c.truncated.Load(),
		GSOFallbacks:         c.gsoFallbacks.Load(),
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
