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

// portMapBudget bounds the port mapping attempts before qualification.
const portMapBudget = 5 * time.Second

// portMap is the stack's port mapping.
type portMap struct {
	*portmap.Mapper
	saw atomic.Pointer[netip.AddrPort] // the server's last view, for Status
}

// startPortMap asks the NAT for a mapping of the client's socket before the
// client qualifies, so that the address is built with it from the first
// router advertisement on. RFC 6081 §4 (UPnP-enabled symmetric NAT): on a
// symmetric NAT the server sees a new random port, but the mapping forwards
// the mapped port to the client from anywhere, so the Teredo address
// carries the mapped endpoint (mappedEndpointFunc) and peers reach the
// client there. The client's answers to them leave from the mapped port
// too: the NAT sends them through the connection the peer's packet opened.
// Its flow to the server does the same because the client has the server
// reach it through the mapping before qualifying (portMappingFunc,
// client/portmapped.go). On a NAT that keeps ports (most home routers) the
// mapped port is the internal one and nothing changes.
//
// A failure is not fatal: the client qualifies as it would without. A
// later change of the mapping shows in the address at the next refresh
// (at most 30 s).
func (s *Stack) startPortMap(ctx context.Context) {
	cfg := s.cfg.PortMap
	cfg.InternalPort = s.conn.LocalAddr().Port()
	// No PCP PEER towards the servers: miniupnpd 2.3.1 (nftables) installs
	// its PEER snat rule for the reverse direction, which rewrites the
	// server's packets to us instead of ours to it. The address carries
	// the mapping anyway (mappedEndpointFunc).
	cfg.Peers = nil
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

// portMappingFunc returns the client's PortMapping hook: the mapping's
// external endpoint, which the client has the server reach first so that
// its own flow to the server leaves from the mapped port
// (client/portmapped.go).
func (s *Stack) portMappingFunc() func() netip.AddrPort {
	if s.pm == nil {
		return nil
	}
	return func() netip.AddrPort {
		mp, ok := s.pm.Mapping()
		if !ok {
			return netip.AddrPort{}
		}
		return mp.External
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
