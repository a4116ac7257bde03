package stack

// RFC 4380 §5.2.8 local discovery, the socket side. The client role sends
// discovery bubbles through the service socket and judges what arrives
// (client.Config.LocalDiscovery, (*client.Client).ReceiveDiscovery); the
// stack owns the second socket those bubbles arrive on: UDP port 3544 on
// every address, joined to 224.0.0.253 on the configured interface or on
// every suitable one (discovery_links.go).
//
// Multicast loopback. The service socket keeps the kernel's default
// IP_MULTICAST_LOOP (on), unlike Miredo, which turns it off: with it, a
// discovery bubble also reaches the discovery sockets of the sending host,
// so several clients on one host (each with its own service port) find
// each other. Each client hears its own bubbles too; the client role drops
// them (its Drops["discovery"] counter grows by one per bubble it sent).
//
// Scope. Discovery bubbles leave with IP multicast TTL 1 (Linux's default
// for multicast, which the stack sets again explicitly on the service
// socket it opened) to a group in 224.0.0.0/24, which routers never
// forward (RFC 5771): they stay on the local link.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"

	"github.com/teredo-go/teredo/proto"
)

// maxDiscoveryDatagram bounds what the discovery socket reads: a discovery
// bubble is 40 bytes, with trailers a few more; anything longer is not one
// and the client drops it as malformed.
const maxDiscoveryDatagram = 1500

// syscallConn is a socket whose options can be set, such as the
// *udpio.UDPConn the stack opens.
type syscallConn interface {
	SyscallConn() (syscall.RawConn, error)
}

// discoverySocket receives discovery bubbles on 0.0.0.0:port, joined to
// proto.DiscoveryGroup, and hands each one addressed to the group to a
// handler from one reader goroutine.
type discoverySocket struct {
	conn   *net.UDPConn
	pc     *ipv4.PacketConn
	ifi    *net.Interface // nil: the interface the routing table picks
	handle func(b []byte, from netip.AddrPort)
	log    *slog.Logger

	// delivered counts datagrams given to handle; refused those dropped
	// here because they were not sent to the group (RFC 4380 §5.2.8: drop
	// discovery bubbles that arrive by unicast) or came in on another
	// interface than the configured one.
	delivered, refused atomic.Uint64
	// joinErrors counts failed joins on one interface (follow).
	joinErrors atomic.Uint64

	mu     sync.Mutex
	joined map[int]string // by interface index (0: the default one): name

	closeOnce sync.Once
	done      chan struct{}
}

// listenDiscovery opens the discovery socket on port (0: an ephemeral one,
// for tests), joins the group on ifi (nil: the interface the routing table
// picks for the group), and starts the reader.
func listenDiscovery(port uint16, ifi *net.Interface, handle func([]byte, netip.AddrPort), log *slog.Logger) (*discoverySocket, error) {
	d, err := openDiscovery(port, ifi, handle, log)
	if err != nil {
		return nil, err
	}
	if err := d.pc.JoinGroup(ifi, discoveryGroupAddr); err != nil {
		d.Close()
		where := "the default interface"
		if ifi != nil {
			where = ifi.Name
		}
		return nil, fmt.Errorf("discovery socket: join %v on %s: %w", proto.DiscoveryGroup, where, err)
	}
	return d, nil
}

var discoveryGroupAddr = &net.UDPAddr{IP: net.IP(proto.DiscoveryGroup.AsSlice())}

// openDiscovery opens the discovery socket on port with SO_REUSEADDR and
// SO_REUSEPORT, so that several clients on one host and a co-located
// server that also sets them can share it, and starts the reader; it joins
// no group. Datagrams that arrive on another interface than ifi (nil: any)
// are refused.
func openDiscovery(port uint16, ifi *net.Interface, handle func([]byte, netip.AddrPort), log *slog.Logger) (*discoverySocket, error) {
	lc := net.ListenConfig{Control: discoveryControl}
	c, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), port).String())
	if err != nil {
		return nil, fmt.Errorf("discovery socket: %w", err)
	}
	conn := c.(*net.UDPConn)
	pc := ipv4.NewPacketConn(conn)
	// Without the destination the reader cannot tell multicast from
	// unicast; a system without IP_PKTINFO still gets discovery, unfiltered.
	if err := pc.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		log.Debug("teredo: discovery socket without destination control messages", "err", err)
	}
	d := &discoverySocket{
		conn:   conn,
		pc:     pc,
		ifi:    ifi,
		handle: handle,
		log:    log,
		done:   make(chan struct{}),
		joined: make(map[int]string),
	}
	go d.read()
	return d, nil
}

// follow makes the socket a member of the group on exactly links (by
// index): it joins where it has not yet and leaves interfaces no longer
// listed. A failed join is counted and logged at debug and does not stop
// the others. With no link at all, the socket keeps what it has, or joins
// on the interface the routing table picks if it has nothing.
func (d *discoverySocket) follow(links []discoveryLink) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(links) == 0 {
		if len(d.joined) == 0 {
			if err := d.pc.JoinGroup(nil, discoveryGroupAddr); err != nil && !errors.Is(err, syscall.EADDRINUSE) {
				d.joinErrors.Add(1)
				d.log.Debug("teredo: local discovery: cannot join the group on the default interface", "err", err)
				return
			}
			d.joined[0] = ""
		}
		return
	}
	want := make(map[int]bool, len(links))
	for _, l := range links {
		want[l.Index] = true
		if _, ok := d.joined[l.Index]; ok {
			continue
		}
		// EADDRINUSE: already a member there, through the default
		// interface's membership.
		err := d.pc.JoinGroup(&net.Interface{Index: l.Index, Name: l.Name}, discoveryGroupAddr)
		if err != nil && !errors.Is(err, syscall.EADDRINUSE) {
			d.joinErrors.Add(1)
			d.log.Debug("teredo: local discovery: cannot join the group", "interface", l.Name, "err", err)
			continue
		}
		d.joined[l.Index] = l.Name
	}
	for index, name := range d.joined {
		if want[index] {
			continue
		}
		var ifi *net.Interface // the default interface's membership
		if index != 0 {
			ifi = &net.Interface{Index: index, Name: name}
		}
		// An interface that is gone took the membership with it; the
		// error only says so.
		if err := d.pc.LeaveGroup(ifi, discoveryGroupAddr); err != nil {
			d.log.Debug("teredo: local discovery: leave the group", "interface", name, "err", err)
		}
		delete(d.joined, index)
	}
}

// memberships returns the names of the interfaces the socket joined the
// group on, sorted; "" stands for the default interface.
func (d *discoverySocket) memberships() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.joined))
	for _, n := range d.joined {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// LocalAddr returns the socket's bound address.
func (d *discoverySocket) LocalAddr() netip.AddrPort {
	return d.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (d *discoverySocket) read() {
	defer close(d.done)
	buf := make([]byte, maxDiscoveryDatagram)
	for {
		n, cm, src, err := d.pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// A UDP socket's reads fail only when it is closed; anything
				// else would repeat, so stop rather than spin.
				d.log.Warn("teredo: local discovery socket failed; local discovery stops", "err", err)
			}
			return
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			d.refused.Add(1)
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if cm != nil {
			dst, _ := netip.AddrFromSlice(cm.Dst)
			if dst.Unmap() != proto.DiscoveryGroup || d.ifi != nil && cm.IfIndex != d.ifi.Index {
				d.refused.Add(1)
				d.log.Debug("teredo: discovery socket: not a discovery datagram", "from", from, "dst", dst, "ifindex", cm.IfIndex)
				continue
			}
		}
		d.delivered.Add(1)
		d.handle(buf[:n], from)
	}
}

// Close closes the socket and waits for the reader to stop. It may be
// called more than once.
func (d *discoverySocket) Close() error {
	var err error
	d.closeOnce.Do(func() { err = d.conn.Close() })
	<-d.done
	return err
}

// startDiscovery opens the discovery socket on port when the
// configuration asks for local discovery. Discovery is best-effort: if the
// socket cannot be opened (the port is taken by a socket that does not
// share it, the interface is unknown, the host has no multicast route), a
// warning is logged and the stack runs without it.
func (s *Stack) startDiscovery(port uint16) {
	if !s.cfg.LocalDiscovery {
		return
	}
	var ifi *net.Interface
	if name := s.cfg.DiscoveryInterface; name != "" {
		var err error
		if ifi, err = net.InterfaceByName(name); err != nil {
			s.log.Warn("teredo: local discovery off", "err", fmt.Errorf("discovery interface: %w", err))
			return
		}
	}
	// The client's discovery bubbles leave through the service socket:
	// keep them on the link and, when an interface is configured, on the
	// one that listens. Injected connections (tests) are left as they are.
	if sc, ok := s.conn.(syscallConn); ok {
		if err := scopeMulticast(sc, ifi); err != nil {
			s.log.Warn("teredo: local discovery: multicast options of the service socket", "err", err)
		}
	}
	cl := s.cl
	handle := func(b []byte, from netip.AddrPort) { cl.ReceiveDiscovery(b, from) }
	var d *discoverySocket
	var err error
	if s.dt != nil {
		// Every suitable interface: join on those there are now; each
		// discovery bubble brings the memberships up to date.
		if d, err = openDiscovery(port, nil, handle, s.log); err == nil {
			all, lerr := s.dt.links()
			if lerr != nil {
				s.dt.listErrors.Add(1)
				s.log.Debug("teredo: local discovery: cannot list interfaces", "err", lerr)
			}
			d.follow(suitableLinks(all))
			follow := d.follow
			s.dt.follow.Store(&follow)
		}
	} else {
		d, err = listenDiscovery(port, ifi, handle, s.log)
	}
	if err != nil {
		s.log.Warn("teredo: local discovery runs without its socket: neighbours' discovery bubbles go unheard", "err", err)
		return
	}
	if s.dt != nil {
		s.log.Info("teredo: local discovery on", "socket", d.LocalAddr(), "group", proto.DiscoveryGroup, "interfaces", d.memberships())
	} else {
		s.log.Info("teredo: local discovery on", "socket", d.LocalAddr(), "group", proto.DiscoveryGroup, "interface", s.cfg.DiscoveryInterface)
	}
	s.disc = d
}

// newDiscoveryTransport returns the transport that sends the client's
// discovery bubbles on every suitable interface, or nil when the stack
// sends them once, where the routing table or Config.DiscoveryInterface
// says: discovery is off, an interface is configured, or the socket is not
// one whose outgoing interface can be chosen per datagram (injected
// connections, systems other than Linux).
func (s *Stack) newDiscoveryTransport() *discoveryTransport {
	if !s.cfg.LocalDiscovery || s.cfg.DiscoveryInterface != "" {
		return nil
	}
	sc, ok := s.conn.(syscallConn)
	if !ok {
		return nil
	}
	send, err := linkSender(sc)
	if err != nil || send == nil {
		if err != nil {
			s.log.Debug("teredo: local discovery on one interface only", "err", err)
		}
		return nil
	}
	return &discoveryTransport{conn: s.conn, links: hostLinks, sendOn: send, log: s.log}
}

// stopDiscovery closes the discovery socket, if any, and waits for its
// reader.
func (s *Stack) stopDiscovery() {
	if s.dt != nil {
		s.dt.follow.Store(nil)
	}
	if s.disc != nil {
		s.disc.Close()
	}
}

// discoveryStats returns local discovery's counters.
func (s *Stack) discoveryStats() DiscoveryStats {
	var st DiscoveryStats
	if s.dt != nil {
		st = s.dt.stats()
	}
	if s.disc != nil {
		st.Delivered = s.disc.delivered.Load()
		st.Refused = s.disc.refused.Load()
		st.JoinErrors = s.disc.joinErrors.Load()
	}
	return st
}

// LocalDiscovery reports whether local discovery runs: Config.LocalDiscovery
// is on, its socket on port 3544 opened, and the stack is not closed. When
// the option is on but the socket could not be opened, the client still
// sends discovery bubbles, so neighbours can find this stack, but it hears
// none of theirs.
func (s *Stack) LocalDiscovery() bool { return s.disc != nil && !s.Closed() }
