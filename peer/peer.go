// Package peer is the bounded Teredo peer list shared by the client and relay
// roles: entries keyed by IPv6 address, with trust and validity, the RFC 4380
// bubble and echo-test rate limits, a per-peer packet queue and a retry timer.
//
// The data path uses two read-locked lookups that allocate nothing: Route
// (transmit to a trusted, valid peer) and Accept (receive from a trusted peer
// whose mapping matches). Everything else goes through Update, which runs a
// function on one entry under the table's write lock; the function may read
// and change the entry's exported fields and call its methods, but must not
// call back into the Table or do I/O. Packets leave the queue with TakeQueue
// and go back to the buffer pool with Release once sent.
package peer

import (
	"github.com/teredo-go/teredo/proto"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// State is what a role knows about reaching a peer.
type State uint8

const (
	// Unknown means there is no entry for the address.
	Unknown State = iota
	// Pending means the entry exists but is not trusted and valid yet:
	// bubbles or echo tests are in progress.
	Pending
	// Reachable means the peer is trusted and was heard from within its
	// validity period.
	Reachable
	// Unreachable means the bubbles or echo tests were exhausted without an
	// answer.
	Unreachable
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Reachable:
		return "reachable"
	case Unreachable:
		return "unreachable"
	}
	return "unknown"
}

// Limit bounds how often a packet of one kind (bubble or echo request) may be
// sent to a peer: never within Interval of the previous one, and at most Max
// in a series; a new series may start Window after the first packet of the
// previous one.
type Limit struct {
	Interval time.Duration
	Max      int
	Window   time.Duration
}

// Config configures a Table. Zero fields take the defaults below.
type Config struct {
	// MaxPeers bounds the table; when it is full, the least recently used
	// entry (approximated with the CLOCK algorithm) makes room.
	MaxPeers int
	// Validity is how long after the last receive a peer stays valid
	// (RFC 4380 §5.2.4: 30 s); LocalValidity is the same for local peers
	// (600 s, §5.2.4 case 3).
	Validity      time.Duration
	LocalValidity time.Duration
	// Expiry is how long an entry may stay without traffic in either
	// direction before the periodic sweep removes it.
	Expiry time.Duration
	// QueuePackets and QueueBytes bound each peer's queue.
	QueuePackets int
	QueueBytes   int
	// Bubble and Ping are the rate limits of CountBubble and CountPing.
	Bubble Limit
	Ping   Limit
	// Clock runs the retry timers and the expiry sweep. Nil means no timers:
	// Arm is then a no-op and Expire must be called by the owner.
	Clock clock.Clock
	// OnTimer is called, with no lock held, when a peer's retry timer set by
	// Peer.Arm fires. The owner looks the peer up again with Update: the
	// entry may have changed or gone in the meantime.
	OnTimer func(addr netip.Addr)
}

// Defaults for Config fields left zero: the peer list of RFC 4380 §5.2.4,
// §5.2.6 and §5.2.9. The roles pass their own bounds (client.DefaultMaxPeers,
// relay.DefaultMaxPeers and relay.DefaultExpiry): this package knows no
// role.
const (
	DefaultMaxPeers      = 4096
	DefaultValidity      = 30 * time.Second
	DefaultLocalValidity = 600 * time.Second
	DefaultExpiry        = 600 * time.Second
	DefaultQueuePackets  = 8
	DefaultQueueBytes    = 8 * proto.MinMTU
)

// DefaultBubbleLimit is RFC 4380 §5.2.6: not within 2 s of the last bubble,
// at most 4 per 300 s.
var DefaultBubbleLimit = Limit{Interval: 2 * time.Second, Max: 4, Window: 300 * time.Second}

// DefaultPingLimit is RFC 4380 §5.2.4 case 2 as Miredo does it: an echo
// request and up to 3 repeats, 2 s apart. A new series may start after 30 s,
// the validity period, so that a destination that was down is tried again.
var DefaultPingLimit = Limit{Interval: 2 * time.Second, Max: 4, Window: 30 * time.Second}

func (c *Config) setDefaults() {
	if c.MaxPeers <= 0 {
		c.MaxPeers = DefaultMaxPeers
	}
	if c.Validity <= 0 {
		c.Validity = DefaultValidity
	}
	if c.LocalValidity <= 0 {
		c.LocalValidity = DefaultLocalValidity
	}
	if c.Expiry <= 0 {
		c.Expiry = DefaultExpiry
	}
	if c.QueuePackets <= 0 {
		c.QueuePackets = DefaultQueuePackets
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.Bubble.Max <= 0 {
		c.Bubble = DefaultBubbleLimit
	}
	if c.Ping.Max <= 0 {
		c.Ping = DefaultPingLimit
	}
}

// Stats counts table events.
type Stats struct {
	Peers      int
	Created    uint64
	Evicted    uint64 // removed to make room for a new entry
	Expired    uint64 // removed by the idle sweep
	QueueDrops uint64 // packets refused by a full queue
	Dropped    uint64 // queued packets discarded with their entry
}

// Table is the peer list. It is safe for concurrent use.
type Table struct {
	cfg   Config
	epoch time.Time

	mu     sync.RWMutex
	m      map[[16]byte]*Peer
	slots  []*Peer // CLOCK ring; nil slots are free
	free   []int
	hand   int
	pool   sync.Pool // *[]byte of capacity bufSize
	sweep  clock.Timer
	closed bool

	created, evicted, expired, queueDrops, dropped atomic.Uint64
}

// New returns an empty table. With a Clock it sweeps idle entries every half
// Expiry until Close.
func New(cfg Config) *Table {
	cfg.setDefaults()
	t := &Table{cfg: cfg, m: make(map[[16]byte]*Peer)}
	if cfg.Clock != nil {
		t.epoch = cfg.Clock.Now()
		// Under t.mu: sweepTick reads t.sweep under it, and may run
		// before AfterFunc returns.
		t.mu.Lock()
		t.sweep = cfg.Clock.AfterFunc(cfg.Expiry/2, t.sweepTick)
		t.mu.Unlock()
	} else {
		t.epoch = time.Now()
	}
	return t
}

// Config returns the table's configuration with defaults filled in.
func (t *Table) Config() Config { return t.cfg }

func (t *Table) sweepTick() {
	t.Expire(t.cfg.Clock.Now())
	t.mu.Lock()
	if !t.closed {
		t.sweep.Reset(t.cfg.Expiry / 2)
	}
	t.mu.Unlock()
}

// ts converts a time to the table's monotonic nanoseconds.
func (t *Table) ts(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

// Route is the transmit fast path: if addr is a trusted peer heard from
// within its validity period, it records the send and returns the peer's
// mapping.
func (t *Table) Route(addr [16]byte, now time.Time) (netip.AddrPort, bool) {
	n := t.ts(now)
	t.mu.RLock()
	p := t.m[addr]
	if p == nil || !p.Trusted || !p.validAt(n) {
		t.mu.RUnlock()
		return netip.AddrPort{}, false
	}
	m := p.Mapping
	p.lastSend.Store(n)
	p.touch()
	t.mu.RUnlock()
	return m, true
}

// RouteAwaiting is Route for a packet that calls for an answer from the
// peer (for instance a TCP segment carrying data): it also counts the packet
// as awaiting one until the next receive from the peer's mapping, and
// returns how many such packets were routed since that receive and how long
// ago the first of them was. The owner decides from these when a mapping
// has gone silent; the table only keeps count.
func (t *Table) RouteAwaiting(addr [16]byte, now time.Time) (m netip.AddrPort, awaiting int, since time.Duration, ok bool) {
	n := t.ts(now)
	t.mu.RLock()
	p := t.m[addr]
	if p == nil || !p.Trusted || !p.validAt(n) {
		t.mu.RUnlock()
		return netip.AddrPort{}, 0, 0, false
	}
	m = p.Mapping
	p.lastSend.Store(n)
	p.touch()
	// Concurrent senders may both see zero and both set the start; either
	// time is a fine start of the silence.
	k := p.awaiting.Add(1)
	if k == 1 {
		p.awaitingSince.Store(n)
	}
	since = time.Duration(n - p.awaitingSince.Load())
	t.mu.RUnlock()
	return m, int(k), max(since, 0), true
}

// Accept is the receive fast path (RFC 4380 §5.2.3 case 1): if addr is a
// trusted peer whose mapping is from, it records the receive and reports
// true.
func (t *Table) Accept(addr [16]byte, from netip.AddrPort, now time.Time) bool {
	n := t.ts(now)
	t.mu.RLock()
	p := t.m[addr]
	if p == nil || !p.Trusted || p.Mapping != from {
		t.mu.RUnlock()
		return false
	}
	p.lastRecv.Store(n)
	p.answered()
	p.touch()
	t.mu.RUnlock()
	return true
}

// Update runs f on the entry for addr under the write lock, creating the
// entry first if create is set (a new entry is untrusted, with last receive
// and last send 30 s in the past as RFC 4380 §5.2.6 asks, so it is not
// valid). It reports whether f ran. f must not call the Table.
func (t *Table) Update(addr [16]byte, create bool, now time.Time, f func(p *Peer)) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	p := t.m[addr]
	if p == nil {
		if !create {
			return false
		}
		p = t.insert(addr, now)
	}
	p.touch()
	p.now = t.ts(now)
	f(p)
	if p.remove {
		t.remove(p)
	}
	return true
}

func (t *Table) insert(addr [16]byte, now time.Time) *Peer {
	if len(t.m) >= t.cfg.MaxPeers {
		t.evictOne()
	}
	n := t.ts(now)
	p := &Peer{t: t, addr: addr, created: n}
	stale := n - int64(t.cfg.Validity) - 1
	p.lastRecv.Store(stale)
	p.lastSend.Store(stale)
	if k := len(t.free); k > 0 {
		p.slot = t.free[k-1]
		t.free = t.free[:k-1]
		t.slots[p.slot] = p
	} else {
		p.slot = len(t.slots)
		t.slots = append(t.slots, p)
	}
	t.m[addr] = p
	t.created.Add(1)
	return p
}

// evictOne removes the first entry the CLOCK hand finds without its
// reference bit, clearing bits as it goes; two turns always find one.
func (t *Table) evictOne() {
	for i := 0; i < 2*len(t.slots)+1; i++ {
		if t.hand >= len(t.slots) {
			t.hand = 0
		}
		p := t.slots[t.hand]
		t.hand++
		if p == nil {
			continue
		}
		if p.ref.Load() {
			p.ref.Store(false)
			continue
		}
		t.remove(p)
		t.evicted.Add(1)
		return
	}
}

func (t *Table) remove(p *Peer) {
	delete(t.m, p.addr)
	t.slots[p.slot] = nil
	t.free = append(t.free, p.slot)
	p.Disarm()
	t.dropped.Add(uint64(p.q.n))
	p.q.clear(t)
	p.removed = true
}

// Delete removes the entry for addr and discards its queue.
func (t *Table) Delete(addr [16]byte) {
	t.mu.Lock()
	if p := t.m[addr]; p != nil {
		t.remove(p)
	}
	t.mu.Unlock()
}

// Flush removes every entry, as the client does when its address changes.
func (t *Table) Flush() {
	t.mu.Lock()
	for _, p := range t.slots {
		if p != nil {
			t.remove(p)
		}
	}
	t.slots = t.slots[:0]
	t.free = t.free[:0]
	t.hand = 0
	t.mu.Unlock()
}

// Expire removes entries without traffic for Expiry and returns how many.
func (t *Table) Expire(now time.Time) int {
	n := t.ts(now)
	lim := int64(t.cfg.Expiry)
	k := 0
	t.mu.Lock()
	for _, p := range t.slots {
		if p != nil && n-p.lastActive() > lim {
			t.remove(p)
			k++
		}
	}
	t.mu.Unlock()
	t.expired.Add(uint64(k))
	return k
}

// State reports what is known about reaching addr.
func (t *Table) State(addr [16]byte, now time.Time) State {
	n := t.ts(now)
	t.mu.RLock()
	defer t.mu.RUnlock()
	p := t.m[addr]
	switch {
	case p == nil:
		return Unknown
	case p.Trusted && p.validAt(n):
		return Reachable
	case p.Unreachable:
		return Unreachable
	}
	return Pending
}

// Len returns the number of entries.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// Stats returns the counters.
func (t *Table) Stats() Stats {
	return Stats{
		Peers:      t.Len(),
		Created:    t.created.Load(),
		Evicted:    t.evicted.Load(),
		Expired:    t.expired.Load(),
		QueueDrops: t.queueDrops.Load(),
		Dropped:    t.dropped.Load(),
	}
}

// Close stops every timer and empties the table; later Updates do nothing.
func (t *Table) Close() {
	t.mu.Lock()
	t.closed = true
	if t.sweep != nil {
		t.sweep.Stop()
	}
	t.mu.Unlock()
	t.Flush()
}
