package client

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// Port prediction behind a symmetric NAT whose ports can be foreseen: RFC
// 6081's sequential port-symmetric NAT, and the detection of its
// port-preserving symmetric NAT.
//
// Source: the RFC's rule text was not at hand (only its first page, the
// trailer layouts in proto/trailer.go, and Windows' "NAT Special Behaviour:
// PortPreserving" in netsh output). What follows is reasoned from those and
// from what the lab's NATs do; the Random Port trailer (type 5, the port)
// is used as its name says.
//
// Why: behind a symmetric NAT every destination gets its own public port.
// Our direct bubble to a peer opens our NAT for the peer, but at a port
// nobody told the peer: a peer behind a port-restricted NAT (a home
// router) answers our indirect bubble at the port in our Teredo address,
// which our NAT keeps for the server, and nothing ever meets
// (internal/lab/DESIGN.md, "NAT matrix", row c). If the peer knew the port
// our NAT gave our direct bubble, its answer there would both open its own
// NAT towards us and come in through ours.
//
// Detection, in the NAT classification after qualification: the server saw
// us at port P1 (primary address) and P2 (secondary address). P1 != P2 is a
// symmetric NAT. If P2 - P1 is a small step (1..maxSeqStep) the NAT hands
// out ports in sequence: "sequential". If P1 is our socket's own port, the
// NAT kept it for the first flow and gave the second another one:
// "port-preserving". Anything else is "random". Status.NATPorts says which.
//
// Sequential: a direct bubble to a new peer takes the NAT's next port X.
// Right after it, we send an RS to our server from a new socket (PortProbe):
// a new flow, which takes the port after X, and the server's RA reports it.
// X is that port minus the step, and an indirect bubble with a Random Port
// trailer carrying X goes to the peer through its server. Measuring after the
// bubble, not before, leaves the least room for another flow of the NAT to
// come in between. The prediction is kept per peer while the NAT keeps the
// flow (predictionTTL), so bubble retries repeat it without new probes.
//
// Receiving: an indirect bubble with a Random Port trailer is answered at
// its origin (RFC 4380) and also at the origin's IPv4 with the trailer's
// port, the same answer (addressed to the sender's HMAC bubble source, with
// its nonce), bounded per destination like every answer. The sender trusts
// the answer because it carries its nonce and source; the answer opened our
// NAT towards the predicted port, so the sender's data gets in, and our
// client then proves the sender's new mapping with its own bubbles
// (holdTeredo) before delivering anything. Miredo ignores the trailer.
//
// Port-preserving NATs are detected and reported, not used: the gain there
// comes from a socket per peer (a new local port, which such a NAT keeps),
// which the link's single-socket data path does not have.
//
// Limits: a peer that starts the exchange towards us is not helped: its
// bubbles come from its HMAC link-local source, so we do not know its
// Teredo address and cannot send it an indirect bubble with our port.

// NATPorts is what the NAT classification found out about a symmetric
// NAT's choice of ports.
type NATPorts int

const (
	NATPortsUnknown    NATPorts = iota // not symmetric, not classified, or no Config.PortProbe
	NATPortsRandom                     // no pattern: ports cannot be predicted
	NATPortsSequential                 // each new flow gets the previous port + a small step
	NATPortsPreserving                 // the first flow from a local port keeps that port
)

func (p NATPorts) String() string {
	switch p {
	case NATPortsUnknown:
		return ""
	case NATPortsRandom:
		return "random"
	case NATPortsSequential:
		return "sequential"
	case NATPortsPreserving:
		return "port-preserving"
	}
	return "NATPorts(?)"
}

// PortProbe gives the client what port prediction needs from outside: its
// socket's port, and a UDP socket of its own for one request.
type PortProbe interface {
	// LocalPort is the port of the client's UDP socket.
	LocalPort() uint16
	// Probe sends b to `to` from a new UDP socket on the client's local
	// address and calls done, once, on any goroutine (possibly before
	// Probe returns), with the first datagram that socket receives from
	// `to` within timeout, or with nil. It must not block.
	Probe(b []byte, to netip.AddrPort, timeout time.Duration, done func(reply []byte))
}

const (
	// maxSeqStep is the largest port step taken for a sequential NAT.
	maxSeqStep = 8
	// predictionTTL is how long a prediction is reused: a UDP flow with
	// one answer lives 30 s in Linux conntrack, and bubbles are retried
	// within 8 s.
	predictionTTL = 30 * time.Second
	// maxPredictions bounds the peers with a prediction or a probe.
	maxPredictions = 256
)

// predictor is the prediction state, under its own lock (a leaf: nothing
// else is locked or called while it is held).
type predictor struct {
	mu    sync.Mutex
	ports NATPorts
	step  uint16
	peers map[[16]byte]*prediction

	predicted, failed, bubbles, answers atomic.Uint64
}

// prediction is our predicted public port towards one peer.
type prediction struct {
	self    [16]byte // our address when it was made
	pending bool     // a probe is out
	nonce   [8]byte
	port    uint16
	at      time.Time
}

// classifyPorts refines a symmetric classification: primary and secondary
// are the mappings our server's two addresses saw. Under c.mu.
func (c *Client) classifyPorts(primary, secondary netip.AddrPort) {
	kind, step := NATPortsUnknown, uint16(0)
	if pp := c.cfg.PortProbe; pp != nil && primary.IsValid() && primary.Addr() == secondary.Addr() {
		d := secondary.Port() - primary.Port() // mod 2^16: a range may wrap
		switch {
		case primary.Port() == pp.LocalPort():
			kind = NATPortsPreserving
		case d >= 1 && d <= maxSeqStep:
			kind, step = NATPortsSequential, d
		default:
			kind = NATPortsRandom
		}
	}
	c.pred.mu.Lock()
	c.pred.ports, c.pred.step = kind, step
	clear(c.pred.peers)
	c.pred.mu.Unlock()
	if kind != NATPortsUnknown {
		c.log.Info("teredo client: symmetric NAT ports", "kind", kind, "step", step, "primary", primary, "secondary", secondary)
	}
}

// natPorts returns the classification of the NAT's ports.
func (c *Client) natPorts() NATPorts {
	c.pred.mu.Lock()
	defer c.pred.mu.Unlock()
	return c.pred.ports
}

// predictPort runs after a bubble series step to the Teredo peer dst: behind
// a sequential NAT, it sends the indirect bubble with our predicted port, or
// starts the probe that predicts it. Without locks held.
func (c *Client) predictPort(dst [16]byte, l *link, now time.Time) {
	pp := c.cfg.PortProbe
	if pp == nil {
		return
	}
	p := &c.pred
	p.mu.Lock()
	if p.ports != NATPortsSequential {
		p.mu.Unlock()
		return
	}
	e := p.peers[dst]
	switch {
	case e != nil && e.self == l.addr && e.pending:
		p.mu.Unlock()
		return
	case e != nil && e.self == l.addr && now.Sub(e.at) < predictionTTL:
		port := e.port
		p.mu.Unlock()
		c.sendRandomPort(dst, port, l)
		return
	}
	if p.peers == nil {
		p.peers = make(map[[16]byte]*prediction)
	}
	if e == nil && len(p.peers) >= maxPredictions && !p.evict(now) {
		p.mu.Unlock()
		p.failed.Add(1)
		return
	}
	e = &prediction{self: l.addr, pending: true, at: now}
	e.nonce = c.timedNonce("port-probe", l.addr, dst, now)
	p.peers[dst] = e
	p.mu.Unlock()
	c.ctr.rs.Add(1)
	pp.Probe(proto.AppendRS(nil, e.nonce, false), l.serverAP, retryDelay, func(reply []byte) {
		c.probed(dst, e, reply)
	})
}

// evict removes expired predictions, and if none was, the oldest one;
// under p.mu. It reports whether there is room now.
func (p *predictor) evict(now time.Time) bool {
	var oldest [16]byte
	var at time.Time
	for k, e := range p.peers {
		switch {
		case now.Sub(e.at) >= predictionTTL:
			delete(p.peers, k)
		case at.IsZero() || e.at.Before(at):
			oldest, at = k, e.at
		}
	}
	if len(p.peers) >= maxPredictions {
		delete(p.peers, oldest)
	}
	return len(p.peers) < maxPredictions
}

// probed takes the answer to the probe of prediction e for the peer dst.
func (c *Client) probed(dst [16]byte, e *prediction, reply []byte) {
	l := c.up.Load()
	var ra proto.RA
	ok := false
	if l != nil && e.self == l.addr && reply != nil {
		var pkt proto.Packet
		if pkt.Parse(reply) == nil {
			var err error
			ra, err = proto.ParseRA(&pkt)
			ok = err == nil && ra.Nonce == e.nonce && ra.Mapped.Addr() == l.mapped.Addr()
		}
	}
	if ok {
		c.ctr.ra.Add(1)
	}
	p := &c.pred
	p.mu.Lock()
	port := ra.Mapped.Port() - p.step
	ok = ok && p.step != 0 && port != 0
	if p.peers[dst] == e {
		if ok {
			e.pending, e.port, e.at = false, port, c.clk.Now()
		} else {
			delete(p.peers, dst) // the next bubble tries again
		}
	}
	p.mu.Unlock()
	if !ok {
		p.failed.Add(1)
		c.log.Debug("teredo client: port probe failed", "peer", netip.AddrFrom16(dst), "answered", reply != nil)
		return
	}
	p.predicted.Add(1)
	c.log.Debug("teredo client: port predicted", "peer", netip.AddrFrom16(dst), "port", port)
	c.sendRandomPort(dst, port, l)
}

// sendRandomPort sends the Teredo peer dst, through its server, an
// indirect bubble with a Random Port trailer carrying port.
func (c *Client) sendRandomPort(dst [16]byte, port uint16, l *link) {
	b := appendNonce(proto.AppendBubble(nil, c.bubbleSource(dst), netip.AddrFrom16(dst), 0), c.bubbleNonce(l.addr, dst))
	t := proto.Trailers{HasRandomPort: true, RandomPort: port}
	c.pred.bubbles.Add(1)
	c.write(t.Append(b), c.serverAP(proto.ServerBytes(dst[:])))
}

// answerRandomPort sends answer, our answer to the indirect bubble pkt from
// origin, also to origin's IPv4 at the port of pkt's Random Port trailer.
// Malformed trailers are counted by answerAlternates or ignored here: the
// bubble itself was answered.
func (c *Client) answerRandomPort(pkt *proto.Packet, origin netip.AddrPort, answer []byte, now time.Time) {
	if len(pkt.Trailer) == 0 {
		return
	}
	t, err := proto.ParseTrailers(pkt.Trailer)
	if err != nil || !t.HasRandomPort || t.RandomPort == 0 || t.RandomPort == origin.Port() {
		return
	}
	to := netip.AddrPortFrom(origin.Addr(), t.RandomPort)
	if !c.allowReply(to, now) {
		return
	}
	c.pred.answers.Add(1)
	c.write(answer, to)
}

// snapshot adds the prediction counters to s.
func (p *predictor) snapshot(s *Counters) {
	s.PortPredictions, s.PortPredictionFailures = p.predicted.Load(), p.failed.Load()
	s.RandomPortBubbles, s.RandomPortAnswers = p.bubbles.Load(), p.answers.Load()
}
