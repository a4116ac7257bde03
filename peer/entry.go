package peer

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// Peer is one entry of the table. Its exported fields and its methods may be
// used only inside the function given to Table.Update, which holds the
// table's write lock; the fast paths read Trusted and Mapping under the read
// lock.
type Peer struct {
	// Mapping is the peer's IPv4 endpoint: the one embedded in its Teredo
	// address, the one a bubble or echo reply came from, or its relay.
	Mapping netip.AddrPort
	// Trusted is set once a packet proved that Mapping reaches the peer.
	Trusted bool
	// Local marks a peer found by local discovery (longer validity).
	Local bool
	// Unreachable is set by the owner when the rate limits were exhausted
	// without an answer; Trust clears it.
	Unreachable bool
	// Nonce is the owner's last nonce for the peer (RFC 4380 §5.2: "last
	// nonce sent").
	Nonce [8]byte
	// Relay, if valid, is a Teredo relay the owner sends this peer's
	// traffic through because the direct path failed (the client's peer
	// relay, see package client); the table gives it no meaning.
	Relay netip.AddrPort

	t       *Table
	addr    [16]byte
	slot    int
	created int64
	now     int64 // time of the current Update, table nanoseconds
	removed bool
	remove  bool // Remove was called during the current Update

	lastRecv, lastSend atomic.Int64
	ref                atomic.Bool
	// awaiting counts the packets routed with RouteAwaiting since the last
	// receive; awaitingSince is when the first of them was routed.
	awaiting      atomic.Int32
	awaitingSince atomic.Int64

	bubbles, pings limiter
	q              queue
	timer          clock.Timer
}

func (p *Peer) touch() {
	if !p.ref.Load() {
		p.ref.Store(true)
	}
}

func (p *Peer) validity() int64 {
	if p.Local {
		return int64(p.t.cfg.LocalValidity)
	}
	return int64(p.t.cfg.Validity)
}

func (p *Peer) validAt(n int64) bool { return n-p.lastRecv.Load() <= p.validity() }

func (p *Peer) lastActive() int64 {
	a := max(p.created, p.lastRecv.Load(), p.lastSend.Load())
	return a
}

// Addr returns the peer's IPv6 address.
func (p *Peer) Addr() netip.Addr { return netip.AddrFrom16(p.addr) }

// Valid reports whether the peer was heard from within its validity period
// (RFC 4380 §5.2.4: 30 s, 600 s for local peers).
func (p *Peer) Valid() bool { return p.validAt(p.now) }

// LastRecv and LastSend return the times of the last receive and send.
func (p *Peer) LastRecv() time.Time { return p.t.epoch.Add(time.Duration(p.lastRecv.Load())) }

// LastSend returns the time of the last send to the peer.
func (p *Peer) LastSend() time.Time { return p.t.epoch.Add(time.Duration(p.lastSend.Load())) }

// Touch records a receive (recv) or a send at the time of the Update.
func (p *Peer) Touch(recv bool) {
	if recv {
		p.lastRecv.Store(p.now)
		p.answered()
	} else {
		p.lastSend.Store(p.now)
	}
}

// Trust marks the peer trusted at mapping, records a receive, clears the
// unreachable mark and resets the bubble and echo counters, as a valid
// receive does in Miredo.
func (p *Peer) Trust(mapping netip.AddrPort) {
	p.Mapping = mapping
	p.Trusted = true
	p.Unreachable = false
	p.lastRecv.Store(p.now)
	p.answered()
	p.bubbles = limiter{}
	p.pings = limiter{}
}

// answered clears the count of packets awaiting an answer: something came
// back. The store is skipped when there is nothing to clear, so that the
// receive fast path does not dirty the cache line of a peer only received
// from.
func (p *Peer) answered() {
	if p.awaiting.Load() != 0 {
		p.awaiting.Store(0)
	}
}

// Awaiting returns how many packets were routed with Table.RouteAwaiting
// since the last receive from the peer, and how long before the current
// Update the first of them was.
func (p *Peer) Awaiting() (packets int, since time.Duration) {
	n := int(p.awaiting.Load())
	if n == 0 {
		return 0, 0
	}
	return n, time.Duration(p.now - p.awaitingSince.Load())
}

// CountBubble reports whether a bubble may be sent now under the bubble
// limit, and if so counts it and records a send (RFC 4380 §5.2.6).
func (p *Peer) CountBubble() bool {
	if !p.bubbles.allow(p.now, &p.t.cfg.Bubble) {
		return false
	}
	p.lastSend.Store(p.now)
	return true
}

// BubblesExhausted reports whether the bubble limit allows no more bubbles
// in the current series.
func (p *Peer) BubblesExhausted() bool { return p.bubbles.exhausted(p.now, &p.t.cfg.Bubble) }

// Bubbles returns the number of bubbles in the current series.
func (p *Peer) Bubbles() int { return p.bubbles.count }

// CountPing reports whether an echo request may be sent now under the echo
// limit, and if so counts it.
func (p *Peer) CountPing() bool { return p.pings.allow(p.now, &p.t.cfg.Ping) }

// PingsExhausted reports whether the echo limit allows no more requests in
// the current series.
func (p *Peer) PingsExhausted() bool { return p.pings.exhausted(p.now, &p.t.cfg.Ping) }

// Pings returns the number of echo requests in the current series.
func (p *Peer) Pings() int { return p.pings.count }

// Arm (re)starts the peer's retry timer: after d, Config.OnTimer is called
// with the peer's address. Without a Clock it does nothing.
func (p *Peer) Arm(d time.Duration) {
	c := p.t.cfg.Clock
	if c == nil || p.t.cfg.OnTimer == nil || p.removed {
		return
	}
	if p.timer != nil {
		p.timer.Reset(d)
		return
	}
	addr, on := p.Addr(), p.t.cfg.OnTimer
	p.timer = c.AfterFunc(d, func() { on(addr) })
}

// Remove deletes the entry, with its queue and timer, when the current
// Update returns; a relay does this once its bubbles are exhausted.
func (p *Peer) Remove() { p.remove = true }

// Disarm stops the retry timer.
func (p *Peer) Disarm() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// limiter counts packets of one kind in the current series.
type limiter struct {
	count       int
	first, last int64
}

func (l *limiter) exhausted(now int64, lim *Limit) bool {
	return l.count >= lim.Max && now-l.first < int64(lim.Window)
}

func (l *limiter) allow(now int64, lim *Limit) bool {
	if l.count > 0 && now-l.last < int64(lim.Interval) {
		return false
	}
	if l.count >= lim.Max {
		if now-l.first < int64(lim.Window) {
			return false
		}
		l.count = 0
	}
	if l.count == 0 {
		l.first = now
	}
	l.count++
	l.last = now
	return true
}

// Packet is a queued packet, in a buffer owned by the table's pool until
// Release.
type Packet struct {
	// Data is the IPv6 packet.
	Data []byte
	// Inbound marks a received packet held until its sender is confirmed;
	// From is the UDP source it came from.
	Inbound bool
	From    netip.AddrPort
	buf     *[]byte
}

// Enqueue copies the packet given as the gather list bufs into a pooled
// buffer at the tail of the peer's queue. It reports false, and counts a
// drop, if the queue's packet or byte bound would be exceeded.
func (p *Peer) Enqueue(inbound bool, from netip.AddrPort, bufs ...[]byte) bool {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	cfg := &p.t.cfg
	if p.q.n >= cfg.QueuePackets || p.q.bytes+n > cfg.QueueBytes {
		p.t.queueDrops.Add(1)
		return false
	}
	if p.q.ring == nil {
		p.q.ring = make([]Packet, cfg.QueuePackets)
	}
	bp := p.t.getBuf(n)
	b := (*bp)[:0]
	for _, s := range bufs {
		b = append(b, s...)
	}
	*bp = b
	p.q.ring[(p.q.head+p.q.n)%len(p.q.ring)] = Packet{Data: b, Inbound: inbound, From: from, buf: bp}
	p.q.n++
	p.q.bytes += n
	return true
}

// Queued returns the number of queued packets and their total size.
func (p *Peer) Queued() (packets, bytes int) { return p.q.n, p.q.bytes }

// TakeQueue removes every queued packet, in arrival order, appending them to
// dst. The caller sends or discards them and then calls Table.Release.
func (p *Peer) TakeQueue(dst []Packet) []Packet {
	for p.q.n > 0 {
		dst = append(dst, p.q.pop())
	}
	p.q.bytes = 0
	return dst
}

// Release returns the buffers of packets taken with TakeQueue to the pool
// and clears pkts.
func (t *Table) Release(pkts []Packet) {
	for i := range pkts {
		t.putBuf(pkts[i].buf)
		pkts[i] = Packet{}
	}
}

// queue is a FIFO ring of at most QueuePackets packets.
type queue struct {
	ring           []Packet
	head, n, bytes int
}

func (q *queue) pop() Packet {
	pk := q.ring[q.head]
	q.ring[q.head] = Packet{}
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	q.bytes -= len(pk.Data)
	return pk
}

func (q *queue) clear(t *Table) {
	for q.n > 0 {
		pk := q.pop()
		t.putBuf(pk.buf)
	}
	q.bytes = 0
}

// bufSize covers a packet at the Teredo MTU with room to spare; larger
// packets get a buffer of their own.
const bufSize = 2048

func (t *Table) getBuf(n int) *[]byte {
	if n > bufSize {
		b := make([]byte, 0, n)
		return &b
	}
	if b, ok := t.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, bufSize)
	return &b
}

func (t *Table) putBuf(b *[]byte) {
	if b != nil && cap(*b) == bufSize {
		*b = (*b)[:0]
		t.pool.Put(b)
	}
}
