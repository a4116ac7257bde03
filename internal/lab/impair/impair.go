// Package impair delays, jitters and drops packets on their way through a
// user-space wire, a stand-in for netem on kernels that lack it.
package impair

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// Profile is a wide-area path: what the lab puts between a NAT and the internet.
type Profile struct {
	Name string
	// RTT is the round-trip time the path adds: each direction delays a
	// packet by RTT/2.
	RTT time.Duration
	// Jitter spreads each direction's delay uniformly over ±Jitter. A packet
	// never overtakes an earlier one: a real path's queue keeps order, and
	// reordering would measure a different thing than loss recovery.
	Jitter time.Duration
	// Loss is the probability that a packet is dropped, independently in each
	// direction.
	Loss float64
}

// String returns the profile's name, or a description of it.
func (p Profile) String() string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("%v RTT ±%v %.1f%%", p.RTT, p.Jitter, p.Loss*100)
}

// Profiles are the wide-area paths the lab benchmark measures: from a nearby
// relay to one across an ocean on a poor link.
var Profiles = []Profile{
	{Name: "20ms-0%", RTT: 20 * time.Millisecond},
	{Name: "50ms-0.5%", RTT: 50 * time.Millisecond, Loss: 0.005},
	{Name: "100ms-1%", RTT: 100 * time.Millisecond, Loss: 0.01},
	{Name: "150ms-2%", RTT: 150 * time.Millisecond, Loss: 0.02},
}

// ProfileByName returns the profile in Profiles with that name.
func ProfileByName(name string) (Profile, bool) {
	for _, p := range Profiles {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// DefaultLimit is the number of packets a Line holds before it drops new ones:
// far more than any TCP window in the lab (about 40 MB of full frames), so
// loss comes from the profile, not from the line.
const DefaultLimit = 32768

// Stats count what a Line did with the packets it was given.
type Stats struct {
	In       uint64 // packets given to Send
	Lost     uint64 // dropped by the profile's random loss
	Overflow uint64 // dropped because the line held Limit packets
	Out      uint64 // delivered
}

// Line is one direction of an impaired path: Send takes a packet, and the line
// hands it to its output after the profile's delay, or drops it. Output runs
// from the clock's timer callbacks, one at a time, in the order packets were
// sent.
type Line struct {
	clk   clock.Clock
	out   func([]byte)
	limit int

	mu     sync.Mutex
	prof   Profile
	rng    *rand.Rand
	q      []queued // FIFO; q[head:] are waiting
	head   int
	free   [][]byte
	last   time.Time // departure time of the newest packet: none leaves before it
	armed  bool      // a timer is set or its callback is running
	timer  clock.Timer
	stats  Stats
	closed bool
}

type queued struct {
	due time.Time
	b   []byte
}

// NewLine returns a line with profile p whose random choices come from seed,
// so that a run can be repeated. out receives each delivered packet; the slice
// is reused after out returns.
func NewLine(clk clock.Clock, p Profile, seed uint64, out func([]byte)) *Line {
	return &Line{
		clk:   clk,
		out:   out,
		limit: DefaultLimit,
		prof:  p,
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// SetProfile changes the profile for packets sent from now on.
func (l *Line) SetProfile(p Profile) {
	l.mu.Lock()
	l.prof = p
	l.mu.Unlock()
}

// Stats returns the counters so far.
func (l *Line) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Send copies b into the line. It reports whether the packet was queued (false:
// lost, over the limit, or the line is closed).
func (l *Line) Send(b []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.stats.In++
	if l.prof.Loss > 0 && l.rng.Float64() < l.prof.Loss {
		l.stats.Lost++
		return false
	}
	if len(l.q)-l.head >= l.limit {
		l.stats.Overflow++
		return false
	}
	now := l.clk.Now()
	d := l.prof.RTT / 2
	if j := l.prof.Jitter; j > 0 {
		d += time.Duration(l.rng.Int64N(int64(2*j)+1)) - j
	}
	due := now.Add(max(d, 0))
	if due.Before(l.last) {
		due = l.last
	}
	l.last = due
	var buf []byte
	if n := len(l.free); n > 0 {
		buf, l.free = l.free[n-1], l.free[:n-1]
	}
	l.q = append(l.q, queued{due: due, b: append(buf[:0], b...)})
	if !l.armed {
		l.armed = true
		l.arm(due.Sub(now))
	}
	return true
}

// arm schedules fire after d; l.mu is held.
func (l *Line) arm(d time.Duration) {
	if l.timer == nil {
		l.timer = l.clk.AfterFunc(d, l.fire)
		return
	}
	l.timer.Reset(d)
}

// fire delivers every packet that is due, then schedules itself for the next
// one. It is the only caller of out, and no other fire runs meanwhile: Send
// arms the timer only when no timer is armed.
func (l *Line) fire() {
	l.mu.Lock()
	now := l.clk.Now()
	var batch []queued
	for l.head < len(l.q) && !l.q[l.head].due.After(now) {
		batch = append(batch, l.q[l.head])
		l.q[l.head] = queued{}
		l.head++
	}
	if l.head == len(l.q) {
		l.q, l.head = l.q[:0], 0
	} else if l.head > len(l.q)/2 && l.head > 1024 {
		// Reclaim the consumed front instead of growing forever.
		n := copy(l.q, l.q[l.head:])
		clear(l.q[n:])
		l.q, l.head = l.q[:n], 0
	}
	closed := l.closed
	l.mu.Unlock()

	if !closed {
		for _, p := range batch {
			l.out(p.b)
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if !closed {
		l.stats.Out += uint64(len(batch))
	}
	for _, p := range batch {
		l.free = append(l.free, p.b)
	}
	if l.closed || l.head == len(l.q) {
		l.armed = false
		return
	}
	l.arm(l.q[l.head].due.Sub(l.clk.Now()))
}

// Close drops whatever is queued and stops the line; later sends are refused.
func (l *Line) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.timer != nil && l.timer.Stop() {
		l.armed = false
	}
	l.q, l.head, l.free = nil, 0, nil
}
