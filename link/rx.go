package link

import (
	"math"
	"net/netip"
	"unsafe"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// The receive path reads datagrams straight into pooled gVisor views, so
// that a packet reaches the stack in the buffer the kernel wrote it to.
//
// A packet must own its view's chunk alone: gVisor copies a chunk that
// several views share before its headers are parsed (buffer.PullUp), which
// for a chunk holding a whole 64 KiB coalesced message costs far more than
// the copy saved. So each receive slot is scattered over several views,
// each as long as one datagram is expected to be (rxState.seg): the kernel
// fills them in order, and with UDP GRO each datagram of a coalesced
// message lands alone at the start of its own view. A datagram that does
// not (another size, or one too small to be worth a view of its own) is
// copied as before.

const (
	// viewSize is the capacity of each receive view: the pooled chunk
	// size that holds a datagram of the usual 1280 bytes.
	viewSize = 2048
	// minZeroCopy is the smallest datagram that goes over in its view:
	// a smaller one (an ACK) is copied into a chunk of its size, so that
	// it neither pins 2 KiB in a socket queue nor costs the slot a fresh
	// view, which gVisor's pool zeroes.
	minZeroCopy = 512
)

// rxState holds the reader's receive buffers.
type rxState struct {
	msgs  []udpio.Message
	slots []rxSlot
	size  int  // bytes each slot receives
	gro   bool // messages may carry several datagrams
	// seg is the bytes of each view that arm puts in a slot's scatter
	// list: the segment size of the coalesced messages last seen, so
	// that each of their datagrams fills one view. Without GRO, where
	// each message is one datagram, it is viewSize. It is at most
	// viewSize.
	seg     int
	scratch []byte // gathers a datagram that straddles buffers
}

// rxSlot is the scatter list of one message: n views (nil where one went
// to the stack, refilled by arm), then a plain tail buffer for the rest of
// the size.
type rxSlot struct {
	views []*buffer.View
	n     int  // views in the list
	seg   int  // bytes of each view in the list
	dirty bool // a view went to the stack
	tail  []byte
}

func (r *rxState) init(batch, size int, gro bool) {
	r.msgs = make([]udpio.Message, batch)
	r.slots = make([]rxSlot, batch)
	r.size, r.gro, r.seg = size, gro, viewSize
	if gro {
		r.seg = proto.MinMTU
	}
}

// views is how many views of r.seg bytes a slot uses: one message is one
// datagram without GRO; with it, as many as fit.
func (r *rxState) views() int {
	if !r.gro {
		return 1
	}
	return r.size / r.seg
}

// arm gives every slot its views, taking fresh ones from the pool where
// the previous ones went to the stack, and points the messages at them.
func (r *rxState) arm() {
	n := r.views()
	for i := range r.slots {
		sl, m := &r.slots[i], &r.msgs[i]
		m.N = 0
		if !sl.dirty && sl.n == n && sl.seg == r.seg && len(m.Buffers) > 0 {
			continue // as the last read left it
		}
		sl.dirty = false
		for j := n; j < len(sl.views); j++ {
			if sl.views[j] != nil {
				sl.views[j].Release()
				sl.views[j] = nil
			}
		}
		if cap(sl.views) < n {
			sl.views = append(sl.views[:cap(sl.views)], make([]*buffer.View, n-cap(sl.views))...)
		}
		sl.views = sl.views[:n]
		sl.n, sl.seg = n, r.seg
		bufs := m.Buffers[:0]
		for j := range sl.views {
			if sl.views[j] == nil {
				sl.views[j] = buffer.NewViewSize(viewSize)
			}
			// Writing into AsSlice bypasses the view's copy-on-write,
			// which is safe while the reader holds the only reference.
			bufs = append(bufs, sl.views[j].AsSlice()[:r.seg])
		}
		if t := r.size - n*r.seg; t > 0 {
			if cap(sl.tail) < t {
				sl.tail = make([]byte, t)
			}
			bufs = append(bufs, sl.tail[:t])
		}
		m.Buffers = bufs
	}
}

// release returns every view to gVisor's pool when the reader stops.
func (r *rxState) release() {
	for i := range r.slots {
		for j, v := range r.slots[i].views {
			if v != nil {
				v.Release()
				r.slots[i].views[j] = nil
			}
		}
		r.msgs[i].Buffers = r.msgs[i].Buffers[:0]
	}
}

// datagram returns the n bytes at offset off of message i, and the index
// of the view they fill from its start if they lie in that view alone
// (nothing else is read from it: next is where the following datagram
// starts, or beyond the message), else -1. Bytes that straddle buffers
// are gathered into scratch.
func (r *rxState) datagram(i, off, n, next int) ([]byte, int) {
	bufs := r.msgs[i].Buffers
	sl := &r.slots[i]
	seg := sl.seg
	if j := off / seg; j < sl.n && off%seg+n <= seg {
		b := bufs[j][off%seg : off%seg+n]
		if off%seg == 0 && next >= (j+1)*seg {
			return b, j
		}
		return b, -1
	}
	if base := sl.n * seg; off >= base {
		return sl.tail[off-base : off-base+n], -1
	}
	if cap(r.scratch) < n {
		r.scratch = make([]byte, n)
	}
	b := r.scratch[:n]
	gather(b, bufs, off)
	return b, -1
}

// gather fills dst from the scatter list bufs, starting at offset off.
func gather(dst []byte, bufs [][]byte, off int) {
	k := 0
	for _, buf := range bufs {
		if off >= len(buf) {
			off -= len(buf)
			continue
		}
		k += copy(dst[k:], buf[off:])
		off = 0
		if k == len(dst) {
			return
		}
	}
}

// readBatch arms the slots and receives the next batch.
func (e *Endpoint) readBatch() (int, error) {
	e.rx.arm()
	return e.conn.ReadBatch(e.rx.msgs)
}

// handleBatch unwraps the datagrams of the first n messages and hands the
// IPv6 packets to the stack.
func (e *Endpoint) handleBatch(n int, coalescer *gro.GRO) {
	r := &e.rx
	msgs := r.msgs[:n]
	e.rxDatagrams.Add(uint64(len(msgs)))
	e.rxBatches.Add(1)
	tb := e.tun.Load()
	if tb == nil {
		return
	}
	db := e.disp.Load()
	if db != nil {
		coalescer.Dispatcher = db.d
	}
	for i := range msgs {
		m := &msgs[i]
		seg := m.SegmentSize
		if seg <= 0 || m.N <= seg {
			seg = m.N
		} else {
			// The socket coalesced several datagrams (udpio GRO).
			e.rxCoalesced.Add(1)
			e.rxDatagrams.Add(uint64((m.N+seg-1)/seg - 1))
			if r.gro && seg != r.seg && seg >= minZeroCopy && seg <= viewSize {
				// Lay the next reads out for this flow's datagrams.
				r.seg = seg
			}
		}
		for off := 0; off < m.N; off += seg {
			d, next := min(seg, m.N-off), off+seg
			if next >= m.N {
				next = math.MaxInt
			}
			b, view := r.datagram(i, off, d, next)
			e.receive(tb.t, db, coalescer, b, m.Addr, &r.slots[i], view)
		}
	}
	if db != nil {
		coalescer.Flush()
	}
}

// receive hands one datagram to the tunnel and queues the IPv6 packet it
// yields for the stack: in the datagram's own view (sl.views[view]) when
// it has one, which then goes with the packet, else copied.
func (e *Endpoint) receive(t Tunnel, db *dispatcherBox, coalescer *gro.GRO, b []byte, from netip.AddrPort, sl *rxSlot, view int) {
	ip := t.Receive(b, from)
	if ip == nil {
		return
	}
	if db == nil {
		e.rxNotAttached.Add(1)
		return
	}
	if !e.opts.DisableGRO && !validChecksum(ip, true) {
		e.rxBadChecksum.Add(1)
		return
	}
	var pkt *stack.PacketBuffer
	if off, ok := offsetIn(b, ip); ok && view >= 0 && len(b) >= minZeroCopy {
		pkt = viewPacket(sl.views[view], off, len(ip))
		sl.views[view] = nil // arm gives the slot a new one
		sl.dirty = true
		e.rxZeroCopy.Add(1)
	} else {
		pkt = newPacket(ip)
	}
	coalescer.Enqueue(pkt) // takes its own reference if it keeps pkt
	pkt.DecRef()
	e.rxPackets.Add(1)
}

// offsetIn returns the offset of inner within outer, if inner is a
// non-empty sub-slice of outer: the tunnel returns one normally (often
// with its capacity cut, so capacities cannot tell), but its contract does
// not bind it to.
func offsetIn(outer, inner []byte) (int, bool) {
	if len(inner) == 0 || len(outer) == 0 {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(outer)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(inner)))
	if p < base || p-base+uintptr(len(inner)) > uintptr(len(outer)) {
		return 0, false
	}
	return int(p - base), true
}

// viewPacket makes a packet of the n bytes at off in v without copying,
// and takes ownership of v: v becomes the packet's payload, narrowed to
// those bytes, and is released with it.
func viewPacket(v *buffer.View, off, n int) *stack.PacketBuffer {
	v.TrimFront(off)
	v.CapLength(n)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
	return pkt
}
