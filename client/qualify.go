package client

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
)

// Qualification and maintenance timers (RFC 4380 §5.2.1, §5.2.5; Miredo's
// maintain.c).
const (
	// QualificationDelay is how long the client waits for an RA.
	QualificationDelay = 4 * time.Second
	// QualificationTries is how many RS are sent before giving up a server.
	QualificationTries = 3
	// RefreshInterval is the maintenance interval; each refresh is scheduled
	// at a random 75-100 % of it.
	RefreshInterval = 30 * time.Second
	// MinRetryDelay and MaxRetryDelay bound the backoff after every server
	// failed; MaxRetryDelay is Miredo's RestartDelay.
	MinRetryDelay = 5 * time.Second
	MaxRetryDelay = 100 * time.Second
)

// qualState is the qualification state machine; guarded by Client.mu.
type qualState struct {
	state      State
	idx        int        // index of the current server in servers; -1 if SetServers dropped it
	srv        netip.Addr // current server
	tried      int        // servers failed in this cycle through the list
	rounds     int        // cycles failed since the last RA: the backoff's exponent
	nonce      [8]byte    // of the outstanding RS
	awaiting   bool       // an RS is outstanding
	refreshing bool       // the outstanding RS is a refresh while qualified
	tries      int
	timer      clock.Timer
	offline    bool // Offline was emitted since the last Qualified
	opening    bool // waiting for the bubble through the port mapping (portmapped.go)

	// The random flag bits stay the same while the mapping does (RFC 5991,
	// Miredo 1.1.3).
	flags      uint16
	flagMapped netip.AddrPort
}

func (q *qualState) server() netip.Addr { return q.srv }

// natState is the background NAT classification; guarded by Client.mu.
type natState struct {
	result NATType
	phase  int // natIdle, natSecondary, natCone
	nonce  [8]byte
	tries  int
	timer  clock.Timer
}

const (
	natIdle = iota
	natSecondary
	natCone
)

// randomBytes fills b from Config.Rand. A failing reader is a broken
// platform; fall back to HMAC output so that nonces still differ.
func (c *Client) randomBytes(b []byte) {
	if _, err := io.ReadFull(c.cfg.Rand, b); err != nil {
		c.log.Error("teredo client: random source failed", "err", err)
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], uint64(c.clk.Now().UnixNano()))
		m := c.mac("fallback", seed[:])
		copy(b, m[:])
	}
}

func (c *Client) randomDuration(lo, hi time.Duration) time.Duration {
	var b [8]byte
	c.randomBytes(b[:])
	return lo + time.Duration(binary.BigEndian.Uint64(b[:])%uint64(hi-lo+1))
}

// schedule (re)arms *t to run f after d; call with c.mu held.
func (c *Client) schedule(t *clock.Timer, d time.Duration, f func()) {
	if *t == nil {
		*t = c.clk.AfterFunc(d, f)
		return
	}
	(*t).Reset(d)
}

func (c *Client) stopTimers() {
	for _, t := range []clock.Timer{c.q.timer, c.nat.timer, c.disc} {
		if t != nil {
			t.Stop()
		}
	}
}

func (c *Client) serverAP(s netip.Addr) netip.AddrPort { return netip.AddrPortFrom(s, c.port) }

// isServerPort reports whether RAs may come from port: the servers' port,
// or the configured secondary port of a single-address server.
func (c *Client) isServerPort(port uint16) bool {
	return port == c.port || (port == c.cfg.SecondaryPort && port != 0)
}

// secondary returns the secondary address and port of the current server.
// Config.Secondary belongs to the first server of Config.Servers, wherever
// it is in the list now.
func (c *Client) secondary() netip.AddrPort {
	if c.cfg.Secondary.IsValid() && c.q.srv == c.primary {
		port := c.port
		if c.cfg.SecondaryPort != 0 {
			port = c.cfg.SecondaryPort
		}
		return netip.AddrPortFrom(c.cfg.Secondary, port)
	}
	return c.serverAP(c.q.srv.Next())
}

// startRound begins qualification with server idx.
func (c *Client) startRound(idx int) {
	q := &c.q
	q.idx = idx
	q.srv = c.servers[idx]
	q.state = StateQualifying
	q.refreshing = false
	if c.openMapping() {
		return // the RS follows the bubble's return, or openWait
	}
	c.sendRS(true)
}

// sendRS sends an RS to the current server, with a fresh nonce if fresh.
func (c *Client) sendRS(fresh bool) {
	q := &c.q
	if fresh {
		c.randomBytes(q.nonce[:])
		q.tries = 0
	}
	q.awaiting = true
	q.tries++
	c.ctr.rs.Add(1)
	c.queue(proto.AppendRS(nil, q.nonce, false), c.serverAP(q.srv))
	c.schedule(&q.timer, QualificationDelay, c.onQualTimer)
}

func (c *Client) onQualTimer() {
	c.mu.Lock()
	q := &c.q
	switch q.state {
	case StateQualifying:
		switch {
		case q.opening:
			q.opening = false
			c.log.Info("teredo client: the server did not reach us through the port mapping; qualifying anyway", "server", q.srv)
			c.sendRS(true)
		case q.tries < QualificationTries:
			c.sendRS(false)
		default:
			c.failRound(ErrNoReply)
		}
	case StateQualified:
		switch {
		case !q.refreshing:
			q.refreshing = true
			c.sendRS(true)
		case q.tries < QualificationTries:
			c.sendRS(false)
		default:
			c.log.Warn("teredo client: lost connectivity", "server", q.srv)
			c.failRound(ErrNoReply)
		}
	case StateOffline:
		if len(c.servers) == 0 {
			c.backoff(ErrNoServer)
			break
		}
		c.startRound(max(q.idx, 0) % len(c.servers))
	}
	c.unlock()
}

// failRound gives up the current server: the client goes offline and tries
// the next server, immediately, or after a backoff once every server failed.
func (c *Client) failRound(reason error) {
	q := &c.q
	q.opening = false
	q.awaiting = false
	q.refreshing = false
	if c.up.Swap(nil) != nil {
		c.peers.Flush()
	}
	c.stopNAT()
	if !q.offline {
		q.offline = true
		c.emit(Offline{Reason: fmt.Errorf("server %v: %w", q.srv, reason)})
	}
	q.tried++
	n := len(c.servers)
	if q.tried < n {
		next := (q.idx + 1) % n
		c.log.Info("teredo client: trying next server", "server", c.servers[next])
		c.startRound(next)
		return
	}
	q.idx = (q.idx + 1) % n
	c.backoff(reason)
}

// backoff waits, offline, before the next cycle through the server list:
// MinRetryDelay, doubling with each failed cycle up to MaxRetryDelay.
// Call with c.mu held.
func (c *Client) backoff(reason error) {
	q := &c.q
	q.tried = 0
	q.rounds++
	d := min(MinRetryDelay<<min(q.rounds-1, 5), MaxRetryDelay)
	q.state = StateOffline
	c.log.Info("teredo client: offline", "retry", d, "reason", reason)
	c.schedule(&q.timer, d, c.onQualTimer)
	c.backoffs = append(c.backoffs, d)
}

// RA validation failures, counted by reason.
var (
	errRAServer  = errors.New("router advertisement from an unexpected server")
	errRADst     = errors.New("router advertisement to an unexpected destination")
	errRAConfirm = errors.New("router advertisement with non-zero confirmation")
	errRAMapped  = errors.New("router advertisement with a non-global mapping")
	errRANonce   = errors.New("router advertisement with an unknown nonce")
)

// handleRA processes a datagram from a server port that carries an RA.
func (c *Client) handleRA(pkt *proto.Packet, from netip.AddrPort) {
	ra, err := proto.ParseRA(pkt)
	if err != nil {
		c.ctr.drop(dropRAInvalid)
		return
	}
	c.mu.Lock()
	switch {
	case c.q.state == StateClosed:
	case c.q.awaiting && ra.Nonce == c.q.nonce:
		err = c.acceptRA(&ra, from)
	case c.nat.phase == natSecondary && ra.Nonce == c.nat.nonce:
		err = c.natSecondaryRA(&ra, from)
	case c.nat.phase == natCone && ra.Nonce == c.nat.nonce:
		err = c.natConeRA(&ra, from)
	default:
		err = errRANonce
	}
	if err != nil {
		c.log.Debug("teredo client: RA rejected", "from", from, "err", err)
		c.ctr.drop(raDropReason(err))
	}
	c.unlock()
}

func raDropReason(err error) dropReason {
	if errors.Is(err, errRANonce) {
		return dropRANonce
	}
	return dropRAInvalid
}

func (c *Client) checkRA(ra *proto.RA, from netip.AddrPort, want netip.AddrPort, dst netip.Addr) error {
	switch {
	case from != want:
		return errRAServer
	case ra.Dst != dst:
		return errRADst
	case ra.Confirmation != 0:
		return errRAConfirm
	case !c.glob(ra.Mapped.Addr()) || ra.Mapped.Port() == 0:
		return errRAMapped
	}
	return nil
}

// acceptRA handles the answer to a qualification or refresh RS.
func (c *Client) acceptRA(ra *proto.RA, from netip.AddrPort) error {
	q := &c.q
	if err := c.checkRA(ra, from, c.serverAP(q.srv), proto.RSSourceRestricted); err != nil {
		return err
	}
	if ra.Server != q.srv {
		return errRAServer
	}
	c.ctr.ra.Add(1)
	q.awaiting, q.refreshing, q.tried, q.rounds = false, false, 0, 0
	mtu := int(ra.MTU)
	if mtu == 0 {
		mtu = proto.MinMTU
	}
	old := c.up.Load()
	wasUp := q.state == StateQualified && old != nil
	saw := ra.Mapped
	if c.cfg.MappedEndpoint != nil {
		if m := c.cfg.MappedEndpoint(ra.Mapped); c.glob(m.Addr()) && m.Port() != 0 {
			ra.Mapped = m
		}
	}
	if wasUp && old.mapped == ra.Mapped && old.mtu == mtu && old.public == publicAddr(ra.Public, old.ip) {
		c.scheduleRefresh()
		return nil
	}
	if !q.flagMapped.IsValid() || q.flagMapped != ra.Mapped {
		var b [2]byte
		c.randomBytes(b[:])
		q.flags = binary.BigEndian.Uint16(b[:]) & proto.RandomFlagsMask
		q.flagMapped = ra.Mapped
	}
	a := proto.Address{Server: q.srv, Flags: q.flags, Mapped: ra.Mapped}.Addr()
	l := &link{
		addr:       a.As16(),
		ip:         a,
		mapped:     ra.Mapped,
		saw:        saw,
		server:     q.srv,
		serverAP:   c.serverAP(q.srv),
		mtu:        mtu,
		errSrc:     proto.ServerLinkLocal(q.srv),
		public:     publicAddr(ra.Public, a),
		portMapped: c.portMapped(ra.Mapped),
	}
	c.up.Store(l)
	q.state = StateQualified
	q.offline = false
	switch {
	case wasUp && old.mapped != ra.Mapped:
		c.log.Info("teredo client: mapping changed", "old", old.ip, "new", a)
		c.peers.Flush()
		c.emit(AddressChanged{Old: old.ip, New: a})
		c.startNAT()
	case wasUp:
		c.emit(Qualified{Addr: a, Server: q.srv, Mapped: ra.Mapped, MTU: mtu, Public: l.public})
	default:
		c.log.Info("teredo client: qualified", "addr", a, "server", q.srv, "mapped", ra.Mapped, "mtu", mtu, "public", l.public)
		c.peers.Flush()
		c.emit(Qualified{Addr: a, Server: q.srv, Mapped: ra.Mapped, MTU: mtu, Public: l.public})
		c.startNAT()
		if c.cfg.LocalDiscovery {
			c.schedule(&c.disc, c.randomDuration(0, time.Second), c.onDiscoveryTimer)
		}
	}
	c.scheduleRefresh()
	return nil
}

// publicAddr is the address a gateway's client with Teredo address a has
// in the public /64 pfx: a's interface identifier in pfx (the zero Addr
// without a prefix).
func publicAddr(pfx netip.Prefix, a netip.Addr) netip.Addr {
	if !pfx.IsValid() || pfx.Bits() != 64 || !a.Is6() {
		return netip.Addr{}
	}
	p, b := pfx.Addr().As16(), a.As16()
	copy(b[:8], p[:8])
	return netip.AddrFrom16(b)
}

func (c *Client) scheduleRefresh() {
	d := c.randomDuration(RefreshInterval*3/4, RefreshInterval)
	c.schedule(&c.q.timer, d, c.onQualTimer)
}

// startNAT begins the background classification: a restricted RS to the
// secondary address tells symmetric from not; a cone RS, if enabled, goes
// last because its reply from the other address can change a conntrack
// NAT's next mapping.
func (c *Client) startNAT() {
	n := &c.nat
	n.result = NATUnknown
	c.classifyPorts(netip.AddrPort{}, netip.AddrPort{}) // unknown until the probe answers
	n.phase = natSecondary
	c.sendNATProbe(true)
}

func (c *Client) sendNATProbe(fresh bool) {
	n := &c.nat
	if fresh {
		c.randomBytes(n.nonce[:])
		n.tries = 0
	}
	n.tries++
	c.ctr.rs.Add(1)
	if n.phase == natSecondary {
		c.queue(proto.AppendRS(nil, n.nonce, false), c.secondary())
	} else {
		c.queue(proto.AppendRS(nil, n.nonce, true), c.serverAP(c.q.srv))
	}
	c.schedule(&n.timer, QualificationDelay, c.onNATTimer)
}

func (c *Client) stopNAT() {
	c.nat.phase = natIdle
	if c.nat.timer != nil {
		c.nat.timer.Stop()
	}
}

func (c *Client) finishNAT(t NATType) {
	c.stopNAT()
	c.nat.result = t
	c.ttl.symmetric.Store(t == NATSymmetric)
	c.log.Info("teredo client: NAT classified", "type", t)
	c.emit(NATClassified{Type: t})
}

func (c *Client) onNATTimer() {
	c.mu.Lock()
	n := &c.nat
	switch {
	case c.q.state == StateClosed || n.phase == natIdle:
	case n.tries < QualificationTries:
		c.sendNATProbe(false)
	case n.phase == natSecondary:
		// A server without a second address: nothing to compare.
		c.finishNAT(NATUnknown)
	default:
		// No RA from the other address got through.
		c.finishNAT(NATRestricted)
	}
	c.unlock()
}

func (c *Client) natSecondaryRA(ra *proto.RA, from netip.AddrPort) error {
	sec := c.secondary()
	if err := c.checkRA(ra, from, sec, proto.RSSourceRestricted); err != nil {
		return err
	}
	if ra.Server != c.q.srv && ra.Server != sec.Addr() {
		return errRAServer
	}
	c.ctr.ra.Add(1)
	l := c.up.Load()
	if l == nil {
		return nil
	}
	if ra.Mapped != l.mapped {
		c.classifyPorts(l.saw, ra.Mapped)
		c.finishNAT(NATSymmetric)
		return nil
	}
	if !c.cfg.ConeProbe {
		c.finishNAT(NATRestricted)
		return nil
	}
	// The result stays unknown until the cone probe ends, so that Status
	// never reports an interim answer that the probe may still change.
	c.nat.phase = natCone
	c.sendNATProbe(true)
	return nil
}

func (c *Client) natConeRA(ra *proto.RA, from netip.AddrPort) error {
	// The server answers a cone RS from its other address; only that proves
	// the NAT lets in traffic from an endpoint it never saw.
	if err := c.checkRA(ra, from, c.secondary(), proto.RSSourceCone); err != nil {
		return err
	}
	c.ctr.ra.Add(1)
	c.finishNAT(NATCone)
	return nil
}
