package stack

// RFC 4380 §5.2.8 local discovery, the socket side. The client role sends
// discovery bubbles through the service socket and judges what arrives
// (client.Config.LocalDiscovery, (*client.Client).ReceiveDiscovery); the
// stack owns the second socket those bubbles arrive on: UDP port 3544 on
// every address, joined to 224.0.0.253.
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

	closeOnce sync.Once
	done      chan struct{}
}

// listenDiscovery opens the discovery socket on port (0: an ephemeral one,
// for tests) with SO_REUSEADDR and SO_REUSEPORT, so that several clients on
// one host and a co-located server that also sets them can share it, joins
// the group on ifi (nil: the interface the routing table picks for the
// group), and starts the reader.
func listenDiscovery(port uint16, ifi *net.Interface, handle func([]byte, netip.AddrPort), log *slog.Logger) (*discoverySocket, error) {
	lc := net.ListenConfig{Control: discoveryControl}
	c, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), port).String())
	if err != nil {
		return nil, fmt.Errorf("discovery socket: %w", err)
	}
	conn := c.(*net.UDPConn)
	pc := ipv4.NewPacketConn(conn)
	group := &net.UDPAddr{IP: net.IP(proto.DiscoveryGroup.AsSlice())}
	if err := pc.JoinGroup(ifi, group); err != nil {
		conn.Close()
		where := "the default interface"
		if ifi != nil {
			where = ifi.Name
		}
		return nil, fmt.Errorf("discovery socket: join %v on %s: %w", proto.DiscoveryGroup, where, err)
	}
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
	}
	go d.read()
	return d, nil
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
	d, err := listenDiscovery(port, ifi, func(b []byte, from netip.AddrPort) { cl.ReceiveDiscovery(b, from) }, s.log)
	if err != nil {
		s.log.Warn("teredo: local discovery runs without its socket: neighbours' discovery bubbles go unheard", "err", err)
		return
	}
	s.log.Info("teredo: local discovery on", "socket", d.LocalAddr(), "group", proto.DiscoveryGroup, "interface", s.cfg.DiscoveryInterface)
	s.disc = d
}

// stopDiscovery closes the discovery socket, if any, and waits for its
// reader.
func (s *Stack) stopDiscovery() {
	if s.disc != nil {
		s.disc.Close()
	}
}

// LocalDiscovery reports whether local discovery runs: Config.LocalDiscovery
// is on, its socket on port 3544 opened, and the stack is not closed. When
// the option is on but the socket could not be opened, the client still
// sends discovery bubbles, so neighbours can find this stack, but it hears
// none of theirs.
func (s *Stack) LocalDiscovery() bool { return s.disc != nil && !s.Closed() }
