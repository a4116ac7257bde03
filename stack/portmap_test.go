package stack_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/portmap/portmaptest"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// TestPortMapping: with PortMapping on, the stack maps its socket's port
// (PCP MAP) before qualifying, reports it in Status, and deletes it on
// Close. On loopback there is no NAT: the responder reports the loopback
// address and the same port as its external endpoint, so the server's view
// and the mapping agree, as behind a port-preserving NAT.
func TestPortMapping(t *testing.T) {
	in := teredotest.New(t)
	gw, err := portmaptest.NewServer("127.0.0.1:0", netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{
		Servers:     in.Servers(),
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter:  in.IPv4Filter(),
		PortMapping: true,
		PortMap: portmap.Config{
			Gateway:   func() (netip.Addr, error) { return netip.MustParseAddr("127.0.0.1"), nil },
			PCPPort:   gw.Addr().Port(),
			Protocols: []portmap.Protocol{portmap.PCP},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	port := s.LocalAddr().Port()
	st := s.Status().PortMap
	if st == nil || st.Mapping.Protocol != portmap.PCP || st.Mapping.External.Port() != port || !st.InAddress {
		t.Fatalf("port map status %+v", st)
	}
	a, _ := proto.ParseAddress(s.Addr())
	if a.Mapped != st.Mapping.External {
		t.Fatalf("address carries %v, mapping %v", a.Mapped, st.Mapping.External)
	}
	ms := gw.Mappings()
	if len(ms) != 1 || ms[0].Internal.Port() != port || len(ms[0].Peers) != 0 {
		t.Fatalf("gateway table %+v, want port %d, no PEER mapping", ms, port)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if ms := gw.Mappings(); len(ms) != 0 {
		t.Fatalf("mapping left after Close: %+v", ms)
	}
}

// TestPortMappingUnavailable: nothing answers; the stack qualifies anyway
// and its status tells what was tried.
func TestPortMappingUnavailable(t *testing.T) {
	in := teredotest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{
		Servers:     in.Servers(),
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter:  in.IPv4Filter(),
		PortMapping: true,
		PortMap: portmap.Config{
			Gateway: func() (netip.Addr, error) { return netip.MustParseAddr("127.0.0.1"), nil },
			PCPPort: 9, SSDPPort: 9,
			Protocols: []portmap.Protocol{portmap.PCP, portmap.UPnP},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := s.Status().PortMap
	if st == nil || st.Mapping.External.IsValid() || len(st.Attempts) != 2 || st.LastError == "" || st.InAddress {
		t.Fatalf("port map status %+v", st)
	}
}

// TestPortMappingOtherPort: the NAT maps the client to another port than
// the one the server sees (a symmetric NAT whose outbound packets are not
// translated to the mapping): the Teredo address carries the mapped port,
// which is where peers reach the client, and Status shows both.
func TestPortMappingOtherPort(t *testing.T) {
	in := teredotest.New(t)
	gw, err := portmaptest.NewServer("127.0.0.1:0", netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	gw.Reserve(local.Port())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{
		Servers:     in.Servers(),
		LocalAddr:   local,
		IPv4Filter:  in.IPv4Filter(),
		PortMapping: true,
		PortMap: portmap.Config{
			Gateway:   func() (netip.Addr, error) { return netip.MustParseAddr("127.0.0.1"), nil },
			PCPPort:   gw.Addr().Port(),
			Protocols: []portmap.Protocol{portmap.PCP},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := s.Status().PortMap
	a, _ := proto.ParseAddress(s.Addr())
	if st.Mapping.External.Port() == local.Port() || a.Mapped != st.Mapping.External || !st.InAddress || st.ServerSaw != local {
		t.Fatalf("address carries %v; port map status %+v; local %v", a.Mapped, st, local)
	}
}
