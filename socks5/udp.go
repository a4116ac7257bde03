package socks5

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// udpBufSize holds the largest UDP payload plus room in front for the
	// longest IP-address header the relay prepends on the way back.
	udpBufSize  = udpHeadroom + 1<<16
	udpHeadroom = 4 + 16 + 2 // RSV FRAG ATYP, IPv6, port

	resolveTimeout  = 5 * time.Second
	negativeTTL     = 5 * time.Second
	maxCachedNames  = 256
	maxRecvFailures = 16 // consecutive outbound read errors that end an association
)

// association is the state of one UDP ASSOCIATE.
type association struct {
	s     *Server
	ss    *session
	relay *net.UDPConn   // faces the client
	out   net.PacketConn // faces destinations

	clientIP   netip.Addr                     // only source IP accepted
	clientPort uint16                         // required source port, or 0 to learn it
	client     atomic.Pointer[netip.AddrPort] // where replies go, once known
	lastActive atomic.Int64                   // UnixNano of the last relayed datagram

	names map[string]cachedName // used only by the client→destination goroutine
}

type cachedName struct {
	ip      netip.Addr
	err     error
	expires time.Time // zero for successes
}

func (s *Server) associate(ss *session, req request) {
	if s.ListenPacket == nil {
		s.reply(ss, ReplyCommandNotSupported, addr{})
		return
	}
	// Bind where the client reached us: loopback stays loopback.
	localIP := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if ap, ok := netAddrPort(ss.conn.LocalAddr()); ok && ap.Addr().IsValid() {
		localIP = ap.Addr().Unmap()
	}
	network := "udp4"
	if localIP.Is6() {
		network = "udp6"
	}
	relay, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(localIP, 0)))
	if err != nil {
		s.log.Warn("socks5: cannot open UDP relay socket", "addr", localIP, "err", err)
		s.reply(ss, ReplyGeneralFailure, addr{})
		return
	}
	if !ss.track(relay) {
		relay.Close()
		return
	}
	ctx, cancel := s.dialContext(ss)
	out, err := s.ListenPacket(ctx)
	cancel()
	if err != nil {
		rep := s.replyForDialErr(ss, err)
		s.log.Debug("socks5: UDP listen failed", "client", ss.conn.RemoteAddr(), "reply", rep, "err", err)
		s.reply(ss, rep, addr{})
		return
	}
	if !ss.track(out) {
		out.Close()
		return
	}

	a := &association{s: s, ss: ss, relay: relay, out: out}
	a.setClient(req.dst, ss.conn.RemoteAddr())
	a.touch()
	if err := s.reply(ss, ReplySucceeded, addrFromAddrPort(relay.LocalAddr().(*net.UDPAddr).AddrPort())); err != nil {
		return
	}
	s.c.associations.Add(1)
	s.c.activeAssociations.Add(1)
	defer s.c.activeAssociations.Add(-1)
	s.log.Debug("socks5: UDP associated", "client", ss.conn.RemoteAddr(), "relay", relay.LocalAddr())

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.up()
	}()
	go func() {
		defer wg.Done()
		a.down()
	}()
	if a.watchControl() {
		s.c.expired.Add(1)
		s.log.Debug("socks5: UDP association expired", "client", ss.conn.RemoteAddr())
	}
	ss.close()
	wg.Wait()
}

// setClient fixes which source the relay accepts. RFC 1928 §6 has the
// client declare the address it will send from, and lets it leave that
// zero when it does not know it yet.
func (a *association) setClient(declared addr, control net.Addr) {
	if declared.ip.IsValid() && !declared.ip.IsUnspecified() {
		a.clientIP = declared.ip.Unmap()
	} else if ap, ok := netAddrPort(control); ok {
		a.clientIP = ap.Addr().Unmap()
	} else {
		a.clientIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	a.clientPort = declared.port
	if a.clientPort != 0 {
		ap := netip.AddrPortFrom(a.clientIP, a.clientPort)
		a.client.Store(&ap)
	}
}

func (a *association) touch() { a.lastActive.Store(time.Now().UnixNano()) }

// watchControl blocks until the control connection closes or fails, or the
// association has been idle for UDPIdleTimeout, which it reports. The idle
// timer is the control connection's read deadline, pushed back lazily, so
// relaying a datagram costs one atomic store rather than a timer reset.
func (a *association) watchControl() (expired bool) {
	idle := orDefault(a.s.UDPIdleTimeout, DefaultUDPIdleTimeout)
	var buf [64]byte
	for {
		last := time.Unix(0, a.lastActive.Load())
		a.ss.conn.SetReadDeadline(last.Add(idle))
		_, err := a.ss.conn.Read(buf[:])
		if err == nil {
			continue // RFC 1928 gives the client nothing to say here; ignore it
		}
		if !isTimeout(err) {
			return false
		}
		if time.Since(time.Unix(0, a.lastActive.Load())) >= idle {
			return true
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// up relays client datagrams to their destinations until the relay socket
// is closed.
func (a *association) up() {
	s := a.s
	bp := s.getUDPBuf()
	defer s.udpBufs.Put(bp)
	buf := *bp
	// One destination address reused for every WriteTo: the contract says
	// ListenPacket's sockets do not keep it.
	var ipBuf [16]byte
	ua := &net.UDPAddr{}
	for {
		n, src, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			if a.ss.ctx.Err() == nil {
				s.log.Debug("socks5: UDP relay read failed", "err", err)
			}
			a.ss.close()
			return
		}
		if !a.accept(src) {
			s.c.drop.source.Add(1)
			continue
		}
		dst, frag, payload, err := parseUDPHeader(buf[:n])
		if err != nil {
			s.c.drop.malformed.Add(1)
			continue
		}
		if frag != 0 {
			s.c.drop.fragmented.Add(1)
			continue
		}
		ip := dst.ip
		if dst.name != "" {
			if ip, err = a.resolve(dst.name); err != nil {
				s.c.drop.resolve.Add(1)
				continue
			}
		}
		ip = ip.Unmap()
		if ip.Is4() {
			ipBuf4 := ip.As4()
			ua.IP = append(ipBuf[:0], ipBuf4[:]...)
		} else {
			ipBuf = ip.As16()
			ua.IP = ipBuf[:]
		}
		ua.Port, ua.Zone = int(dst.port), ip.Zone()
		// Counted and touched before the write, so that whoever sees the
		// datagram arrive (or its answer) also sees it counted, and the
		// association's idle time starts no later than that.
		s.c.udpUp.Add(1)
		a.touch()
		if _, err := a.out.WriteTo(payload, ua); err != nil {
			s.c.drop.send.Add(1)
			s.log.Debug("socks5: UDP send failed", "dst", dst, "err", err)
			continue
		}
	}
}

// accept reports whether a datagram from src comes from the client, and
// learns the client's port from the first one that can.
func (a *association) accept(src netip.AddrPort) bool {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if src.Addr() != a.clientIP {
		return false
	}
	if c := a.client.Load(); c != nil {
		return *c == src
	}
	a.client.Store(&src) // only this goroutine stores after setup
	return true
}

// resolve looks a destination name up, through the association's cache.
func (a *association) resolve(name string) (netip.Addr, error) {
	if c, ok := a.names[name]; ok && (c.expires.IsZero() || time.Now().Before(c.expires)) {
		return c.ip, c.err
	}
	if a.s.Resolve == nil {
		return netip.Addr{}, errors.New("socks5: no resolver for UDP destinations")
	}
	ctx, cancel := context.WithTimeout(a.ss.ctx, resolveTimeout)
	ip, err := a.s.Resolve(ctx, name)
	cancel()
	if err == nil && !ip.IsValid() {
		err = errors.New("socks5: resolver returned no address")
	}
	if a.names == nil {
		a.names = make(map[string]cachedName)
	}
	if len(a.names) >= maxCachedNames {
		for k := range a.names { // evict one arbitrary entry
			delete(a.names, k)
			break
		}
	}
	c := cachedName{ip: ip, err: err}
	if err != nil {
		c.expires = time.Now().Add(negativeTTL)
		a.s.log.Debug("socks5: UDP destination did not resolve", "name", name, "err", err)
	}
	a.names[name] = c
	return ip, err
}

// down relays datagrams from destinations to the client until the
// outbound socket is closed.
func (a *association) down() {
	s := a.s
	bp := s.getUDPBuf()
	defer s.udpBufs.Put(bp)
	buf := *bp
	failures := 0
	for {
		n, from, err := a.out.ReadFrom(buf[udpHeadroom:])
		if err != nil {
			if a.ss.ctx.Err() != nil {
				return
			}
			// A user-space stack may report transient conditions (an ICMP
			// error, say) as read errors; give up only if they persist.
			s.c.drop.recv.Add(1)
			if failures++; failures >= maxRecvFailures {
				s.log.Debug("socks5: UDP outbound read failing; ending association", "err", err)
				a.ss.close()
				return
			}
			continue
		}
		failures = 0
		src, ok := netAddrPort(from)
		if !ok {
			s.c.drop.recv.Add(1)
			continue
		}
		client := a.client.Load()
		if client == nil {
			s.c.drop.noClient.Add(1)
			continue
		}
		var hdr [udpHeadroom]byte
		h := appendUDPHeader(hdr[:0], addrFromAddrPort(src))
		start := udpHeadroom - len(h)
		copy(buf[start:], h)
		s.c.udpDown.Add(1) // before the write, as in up
		a.touch()
		if _, err := a.relay.WriteToUDPAddrPort(buf[start:udpHeadroom+n], *client); err != nil {
			s.c.drop.reply.Add(1)
			continue
		}
	}
}

func (s *Server) getUDPBuf() *[]byte {
	if bp, ok := s.udpBufs.Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, udpBufSize)
	return &b
}
