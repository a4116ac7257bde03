package stack

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/proto"
)

// PortMapStatus is what the stack's port mapping did: the mapping held (if
// any), what each protocol answered, and whether the Teredo address
// carries the mapped port.
type PortMapStatus struct {
	portmap.Status
	// InAddress reports that the qualified Teredo address carries the
	// mapped external address and port: the server saw the client's
	// packets come from the mapping, so peers reach it there.
	InAddress bool
	// ServerSaw is the endpoint the server last reported (the RA's origin
	// indication); it differs from the mapping on a symmetric NAT.
	ServerSaw netip.AddrPort
}

// startPortMap asks the NAT for a mapping of the client's socket before the
// client qualifies, so that the first router solicitation already leaves
// through it (RFC 6081 §4, the UPnP-enabled symmetric NAT extension, does
// the same with UPnP). PCP also pins the packets to the servers to the
// mapped port (PEER), which on a symmetric NAT makes the server's origin
// indication, and so the Teredo address, carry the mapped port; the NAT's
// inbound forwarding of that port is what lets peers reach the client.
// NAT-PMP and UPnP cannot pin outbound packets: on a NAT that keeps the
// internal port (most home routers), asking for external = internal
// port gives the same result; on a truly symmetric one the mapping is
// reported but the address carries what the server saw.
//
// A failure is not fatal: the client qualifies as it would without.
// A later change of the mapping shows in the address at the client's next
// refresh (at most 30 s), when the server sees the new port.
// portMapBudget bounds the port mapping attempts before qualification.
const portMapBudget = 5 * time.Second

// portMap is the stack's port mapping.
type portMap struct {
	*portmap.Mapper
	saw atomic.Pointer[netip.AddrPort] // the server's last view, for Status
}

func (s *Stack) startPortMap(ctx context.Context) {
	cfg := s.cfg.PortMap
	cfg.InternalPort = s.conn.LocalAddr().Port()
	port := s.cfg.ServerPort
	if port == 0 {
		port = proto.Port
	}
	cfg.Peers = nil
	for _, srv := range s.cfg.Servers {
		if len(cfg.Peers) < 4 {
			cfg.Peers = append(cfg.Peers, netip.AddrPortFrom(srv, port))
		}
	}
	if cfg.Clock == nil {
		cfg.Clock = s.cfg.Clock
	}
	if cfg.Logger == nil {
		cfg.Logger = s.log
	}
	m, err := portmap.New(cfg)
	if err != nil {
		s.log.Warn("portmap: not started", "err", err)
		return
	}
	// Bounded so that a gateway that drops everything costs seconds,
	// not the qualification budget.
	ctx, cancel := context.WithTimeout(ctx, portMapBudget)
	defer cancel()
	s.pm = &portMap{Mapper: m}
	if _, err := m.Start(ctx); err != nil {
		s.log.Info("portmap: no mapping; qualifying without", "err", err)
	}
}

func (s *Stack) portMapStatus(addr netip.Addr) *PortMapStatus {
	if s.pm == nil {
		return nil
	}
	st := &PortMapStatus{Status: s.pm.Status()}
	if saw := s.pm.saw.Load(); saw != nil {
		st.ServerSaw = *saw
	}
	if a, ok := proto.ParseAddress(addr); ok && st.Mapping.External.IsValid() {
		st.InAddress = a.Mapped == st.Mapping.External
	}
	return st
}

func (s *Stack) closePortMap() {
	if s.pm == nil {
		return
	}
	if err := s.pm.Close(); err != nil {
		s.log.Warn("portmap: close", "err", err)
	}
}

// mappedEndpointFunc returns the client's MappedEndpoint hook: the Teredo
// address carries the port mapping's external endpoint when the server saw
// the same public address (the mapping is on the NAT the server sees, not
// on an inner one of a double NAT). On a symmetric NAT the server sees a
// new random port, while peers reach the client at the mapped one (RFC
// 6081 §4, UPnP-enabled symmetric NAT).
func (s *Stack) mappedEndpointFunc() func(netip.AddrPort) netip.AddrPort {
	if s.pm == nil {
		return nil
	}
	return func(saw netip.AddrPort) netip.AddrPort {
		s.pm.saw.Store(&saw)
		mp, ok := s.pm.Mapping()
		if !ok || mp.External.Addr() != saw.Addr() {
			return saw
		}
		if mp.External != saw {
			s.log.Debug("portmap: address carries the mapped port", "server_saw", saw, "mapped", mp.External)
		}
		return mp.External
	}
}

// hasPortMapping reports whether a mapping is held now.
func (s *Stack) hasPortMapping() bool {
	if s.pm == nil {
		return false
	}
	_, ok := s.pm.Mapping()
	return ok
}
