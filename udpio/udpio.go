// Package udpio provides batched UDP/IPv4 datagram I/O (recvmmsg/sendmmsg on
// Linux) for the Teredo client link, relay and server, whose per-datagram cost
// decides throughput.
//
// It is shaped like golang.org/x/net/ipv4's ReadBatch/WriteBatch, with
// netip.AddrPort addresses so that a batch in steady state allocates nothing.
// Package udpiotest holds an in-memory implementation of Conn for tests.
package udpio

import (
	"errors"
	"net/netip"
	"time"
)

// Message is one datagram of a batch.
//
// For ReadBatch, the datagram is scattered over Buffers (usually a single
// receive buffer, Buffers[0]); ReadBatch sets N to the number of bytes stored
// and Addr to the source. For WriteBatch, Buffers is a gather list forming one
// datagram sent to Addr; WriteBatch sets N to the number of bytes sent.
type Message struct {
	Buffers [][]byte
	N       int
	Addr    netip.AddrPort
	// SegmentSize is set by ReadBatch on a UDPConn with GRO on: when
	// positive, the kernel coalesced several datagrams from Addr into this
	// one message, each SegmentSize bytes long except possibly the last.
	// Split them with NextSegment. Zero means the N bytes are one datagram.
	// WriteBatch ignores it.
	SegmentSize int
}

// NextSegment splits the first datagram off the n received bytes b of a
// Message whose SegmentSize is seg, and returns it and the rest. A seg of
// zero (no coalescing) returns all of b as one datagram.
//
//	for rest := m.Buffers[0][:m.N]; len(rest) > 0; {
//		var d []byte
//		d, rest = udpio.NextSegment(rest, m.SegmentSize)
//		handle(d)
//	}
func NextSegment(b []byte, seg int) (datagram, rest []byte) {
	if seg <= 0 || seg >= len(b) {
		return b, nil
	}
	return b[:seg], b[seg:]
}

// Conn is a batched UDP/IPv4 endpoint. Implementations are safe for
// concurrent use: a reader and any number of writers may run at once.
type Conn interface {
	// ReadBatch blocks until at least one datagram is available, then fills
	// msgs[:n] (at most len(msgs)) and returns n >= 1. A datagram larger than
	// its Buffers is truncated to fit; size buffers for the largest datagram
	// accepted (with GRO on, MaxGROSize). With GRO on, one message may carry
	// several datagrams (see Message.SegmentSize). Transient errors reported by the network for earlier sends
	// (ICMP port unreachable surfacing as ECONNREFUSED) are skipped, not
	// returned. After Close it returns an error wrapping net.ErrClosed; when
	// the read deadline passes, one wrapping os.ErrDeadlineExceeded.
	ReadBatch(msgs []Message) (n int, err error)

	// WriteBatch sends msgs in order, each one datagram, and returns how many
	// were sent. If n < len(msgs), err describes why msgs[n] was not sent
	// (for example, a destination that is not IPv4 or a datagram too large);
	// the caller may drop msgs[n] and continue with msgs[n+1:].
	WriteBatch(msgs []Message) (n int, err error)

	// WriteTo sends b as one datagram to addr.
	WriteTo(b []byte, addr netip.AddrPort) error

	// LocalAddr returns the bound local address.
	LocalAddr() netip.AddrPort

	// SetReadDeadline sets the deadline for pending and future ReadBatch
	// calls; the zero time means none.
	SetReadDeadline(t time.Time) error

	// Close closes the endpoint and unblocks a pending ReadBatch.
	Close() error
}

// Defaults for Options fields left zero.
const (
	DefaultReadBuffer  = 4 << 20
	DefaultWriteBuffer = 4 << 20
	// DefaultBatchSize is how many Message slots the Linux implementation
	// preallocates per direction; larger batches grow the arrays once.
	DefaultBatchSize = 64
)

// MaxGROSize is the largest message ReadBatch stores when GRO is on: a
// coalesced message is at most one IPv4 UDP payload long. Smaller receive
// buffers truncate coalesced messages, losing whole datagrams.
const MaxGROSize = 65535 - 20 - 8

// MaxBatch bounds the datagrams handled per system call (Linux's
// UIO_MAXIOV); longer batches are processed in several calls.
const MaxBatch = 1024

// Options tunes a socket opened with Listen.
type Options struct {
	// ReadBuffer and WriteBuffer are the socket buffer sizes in bytes.
	// Zero means the defaults; a negative value keeps the system's default.
	// As root on Linux the sizes are forced past net.core.{r,w}mem_max.
	ReadBuffer, WriteBuffer int

	// ReuseAddr sets SO_REUSEADDR so that several sockets can share a port,
	// as Teredo local discovery needs for 3544.
	ReuseAddr bool

	// BatchSize is the number of Message slots to preallocate per direction.
	// Zero means DefaultBatchSize.
	BatchSize int

	// The offloads are on by default where the kernel has them; the
	// Disable switches turn them off, as everywhere in this module.
	//
	// UDP generic segmentation offload (Linux UDP_SEGMENT) lets WriteBatch
	// send each run of consecutive messages to one destination whose
	// datagrams have equal sizes (the last may be shorter) as one send,
	// which the kernel splits into the same datagrams at a fraction of the
	// per-datagram cost. Where the kernel lacks it or refuses a send, the
	// datagrams go one by one (see Stats.GSOFallbacks). DisableGSO turns it
	// off.
	DisableGSO bool

	// UDP generic receive offload (Linux UDP_GRO) makes the kernel coalesce
	// received datagrams of one flow: ReadBatch then returns messages
	// holding several datagrams, marked by Message.SegmentSize, and receive
	// buffers must hold MaxGROSize bytes. A reader that handles one datagram
	// per message sets DisableGRO.
	DisableGRO bool
}

func (o Options) withDefaults() Options {
	if o.ReadBuffer == 0 {
		o.ReadBuffer = DefaultReadBuffer
	}
	if o.WriteBuffer == 0 {
		o.WriteBuffer = DefaultWriteBuffer
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchSize > MaxBatch {
		o.BatchSize = MaxBatch
	}
	return o
}

// Stats counts events on a UDPConn that are handled without an error being
// returned to the caller.
type Stats struct {
	// ReadTransientErrors counts errors skipped by ReadBatch, such as
	// ECONNREFUSED from an ICMP port unreachable caused by an earlier send.
	ReadTransientErrors uint64
	// WriteTransientErrors counts stale errors of earlier sends reported by a
	// later one, after which the later datagram was retried.
	WriteTransientErrors uint64
	// Truncated counts datagrams that did not fit their receive buffers.
	Truncated uint64
	// GSOFallbacks counts coalesced sends the kernel refused, whose
	// datagrams were then sent one by one. A refusal that says the kernel
	// cannot segment turns GSO off for the socket.
	GSOFallbacks uint64
}

// ErrNotIPv4 reports a destination or local address that is not IPv4.
var ErrNotIPv4 = errors.New("udpio: address is not IPv4")

// ipv4 returns ap with an IPv4-mapped IPv6 address unmapped, and whether
// the result is an IPv4 address.
func ipv4(ap netip.AddrPort) (netip.AddrPort, bool) {
	a := ap.Addr()
	if a.Is4In6() {
		a = a.Unmap()
		ap = netip.AddrPortFrom(a, ap.Port())
	}
	return ap, a.Is4()
}

// datagramLen is the total size of the gather list bufs.
func datagramLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}
