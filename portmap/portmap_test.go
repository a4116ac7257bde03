package portmap_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/portmap/portmaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	loopback = netip.MustParseAddr("127.0.0.1")
	public   = netip.MustParseAddr("198.18.0.12")
	server   = netip.MustParseAddrPort("198.18.0.2:3544")
)

// changes records OnChange calls.
type changes struct {
	mu sync.Mutex
	ms []portmap.Mapping
}

func (c *changes) add(m portmap.Mapping) { c.mu.Lock(); c.ms = append(c.ms, m); c.mu.Unlock() }
func (c *changes) list() []portmap.Mapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ms)
}

func newMapper(t *testing.T, cfg portmap.Config) *portmap.Mapper {
	t.Helper()
	if cfg.InternalPort == 0 {
		cfg.InternalPort = 3544
	}
	if cfg.Gateway == nil {
		cfg.Gateway = func() (netip.Addr, error) { return loopback, nil }
	}
	m, err := portmap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestPCP(t *testing.T) {
	srv, err := portmaptest.NewServer("127.0.0.1:0", public)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clk := clock.NewFake(time.Unix(1e9, 0))
	var ch changes
	m := newMapper(t, portmap.Config{
		PCPPort: srv.Addr().Port(), Peers: []netip.AddrPort{server},
		Lifetime: 600 * time.Second, Clock: clk, OnChange: ch.add,
	})
	mp, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := portmap.Mapping{Protocol: portmap.PCP, Gateway: loopback,
		Internal: netip.AddrPortFrom(loopback, 3544), External: netip.AddrPortFrom(public, 3544),
		Lifetime: 600 * time.Second, Peers: []netip.AddrPort{server}}
	if fmt.Sprint(mp) != fmt.Sprint(want) {
		t.Fatalf("mapping %+v, want %+v", mp, want)
	}
	if got := srv.Mappings(); len(got) != 1 || got[0].External != 3544 || !slices.Equal(got[0].Peers, []netip.AddrPort{server}) {
		t.Fatalf("server table %+v", got)
	}
	// Renewal at half the lifetime, asking for the same port.
	clk.Advance(299 * time.Second)
	if n := len(srv.Requests()); n != 2 {
		t.Fatalf("%d requests before the renewal time: %q", n, srv.Requests())
	}
	clk.Advance(time.Second)
	reqs := srv.Requests()
	if len(reqs) != 4 || reqs[2] != "pcp MAP internal=3544 suggested=3544 lifetime=600" {
		t.Fatalf("requests %q", reqs)
	}
	st := m.Status()
	if st.Renewals != 1 || st.Mapping.External != want.External || !st.Expires.Equal(clk.Now().Add(600*time.Second)) {
		t.Fatalf("status %+v", st)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := srv.Mappings(); len(got) != 0 {
		t.Fatalf("mapping left after Close: %+v", got)
	}
	reqs = srv.Requests()
	if last := reqs[len(reqs)-1]; last != "pcp MAP internal=3544 suggested=3544 lifetime=0" {
		t.Fatalf("last request %q, want a delete", last)
	}
	if len(ch.list()) != 1 {
		t.Fatalf("OnChange calls %+v, want one", ch.list())
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d timers left after Close", clk.Pending())
	}
}

// TestPCPRebootChangesMapping: the gateway forgets the mapping and gives
// another port at the next renewal; OnChange reports it.
func TestPCPRebootChangesMapping(t *testing.T) {
	srv, err := portmaptest.NewServer("127.0.0.1:0", public)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clk := clock.NewFake(time.Unix(1e9, 0))
	var ch changes
	m := newMapper(t, portmap.Config{PCPPort: srv.Addr().Port(), Lifetime: 600 * time.Second, Clock: clk, OnChange: ch.add})
	if _, err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Reboot()
	clk.Advance(300 * time.Second)
	got := ch.list()
	if len(got) != 2 || got[1].External.Port() == 3544 || got[1].External.Port() == 0 {
		t.Fatalf("changes %+v, want a second one with a new port", got)
	}
}

// TestRenewalFailureLosesMapping: renewals fail until the lifetime ends;
// the mapping is reported lost, and discovery starts over.
func TestRenewalFailureLosesMapping(t *testing.T) {
	srv, err := portmaptest.NewServer("127.0.0.1:0", public)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clk := clock.NewFake(time.Unix(1e9, 0))
	var ch changes
	m := newMapper(t, portmap.Config{PCPPort: srv.Addr().Port(), SSDPPort: 9, Protocols: []portmap.Protocol{portmap.PCP},
		Lifetime: 64 * time.Second, Retry: time.Minute, Clock: clk, OnChange: ch.add, Timeout: 300 * time.Millisecond})
	if _, err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.SetFailure(8) // NO_RESOURCES
	// Renewals at 32 s, then at half of what is left (16, 8, 4, 4 s).
	for i := 0; i < 10 && len(ch.list()) < 2; i++ {
		clk.Advance(16 * time.Second)
	}
	got := ch.list()
	if len(got) != 2 || got[1].External.IsValid() {
		t.Fatalf("changes %+v, want the mapping then its loss", got)
	}
	st := m.Status()
	if !strings.Contains(st.LastError, "NO_RESOURCES") || st.Mapping.External.IsValid() {
		t.Fatalf("status %+v", st)
	}
	srv.Expire() // as the gateway would have by now
	srv.SetFailure(0)
	clk.Advance(time.Minute)
	if mp, ok := m.Mapping(); !ok || mp.Protocol != portmap.PCP {
		t.Fatalf("not mapped again after the retry: %+v", m.Status())
	}
}

// natpmpServer listens on a random loopback address at port 5351, which
// go-nat-pmp always uses.
func natpmpServer(t *testing.T) (*portmaptest.Server, netip.Addr) {
	for range 10 {
		ip := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(250)), byte(rand.IntN(256)), byte(1 + rand.IntN(250))})
		srv, err := portmaptest.NewServer(netip.AddrPortFrom(ip, 5351).String(), public)
		if err == nil {
			t.Cleanup(func() { srv.Close() })
			return srv, ip
		}
	}
	t.Skip("no free loopback address for port 5351")
	return nil, netip.Addr{}
}

// TestNATPMPFallback: a NAT-PMP-only gateway answers PCP with version 0
// UNSUPP_VERSION; the mapper falls back to NAT-PMP on the same port.
func TestNATPMPFallback(t *testing.T) {
	srv, gw := natpmpServer(t)
	srv.SetProtocols(false, true)
	clk := clock.NewFake(time.Unix(1e9, 0))
	m := newMapper(t, portmap.Config{Gateway: func() (netip.Addr, error) { return gw, nil },
		Lifetime: 600 * time.Second, Clock: clk})
	mp, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if mp.Protocol != portmap.NATPMP || mp.External != netip.AddrPortFrom(public, 3544) || mp.Lifetime != 600*time.Second {
		t.Fatalf("mapping %+v", mp)
	}
	st := m.Status()
	if len(st.Attempts) != 2 || st.Attempts[0].Protocol != portmap.PCP || !strings.Contains(st.Attempts[0].Err, "version") {
		t.Fatalf("attempts %+v", st.Attempts)
	}
	clk.Advance(300 * time.Second)
	if st := m.Status(); st.Renewals != 1 {
		t.Fatalf("no renewal: %+v", st)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := srv.Mappings(); len(got) != 0 {
		t.Fatalf("mapping left after Close: %+v", got)
	}
}

func TestUPnP(t *testing.T) {
	for _, permanent := range []bool{false, true} {
		t.Run(fmt.Sprint("permanent-only=", permanent), func(t *testing.T) {
			igd, err := portmaptest.NewIGD(loopback, public)
			if err != nil {
				t.Fatal(err)
			}
			defer igd.Close()
			igd.SetPermanentOnly(permanent)
			clk := clock.NewFake(time.Unix(1e9, 0))
			// PCP and NAT-PMP get ICMP port unreachable on loopback port 9.
			m := newMapper(t, portmap.Config{PCPPort: 9, SSDPPort: igd.SSDPAddr().Port(),
				Protocols: []portmap.Protocol{portmap.PCP, portmap.UPnP}, Lifetime: 600 * time.Second, Clock: clk})
			mp, err := m.Start(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if mp.Protocol != portmap.UPnP || mp.External != netip.AddrPortFrom(public, 3544) {
				t.Fatalf("mapping %+v", mp)
			}
			if got := igd.Mappings()[3544]; got.Internal != netip.AddrPortFrom(loopback, 3544) {
				t.Fatalf("IGD table %+v", igd.Mappings())
			}
			clk.Advance(300 * time.Second)
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if len(igd.Mappings()) != 0 {
				t.Fatalf("mapping left after Close: %+v", igd.Mappings())
			}
			want := []string{"AddPortMapping 3544 lease=600", "AddPortMapping 3544 lease=600", "DeletePortMapping 3544"}
			if permanent {
				want = []string{"AddPortMapping 3544 lease=600", "AddPortMapping 3544 lease=0", "AddPortMapping 3544 lease=0", "DeletePortMapping 3544"}
			}
			if got := igd.Actions(); !slices.Equal(got, want) {
				t.Fatalf("actions %q, want %q", got, want)
			}
		})
	}
}

// TestNothingAnswers: every protocol fails promptly on a gateway with no
// port mapping service, and Status tells what was tried.
func TestNothingAnswers(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	m := newMapper(t, portmap.Config{PCPPort: 9, SSDPPort: 9, Protocols: []portmap.Protocol{portmap.PCP, portmap.UPnP},
		Clock: clk, Timeout: time.Second})
	_, err := m.Start(context.Background())
	if !errors.Is(err, portmap.ErrNoMapping) {
		t.Fatalf("err %v", err)
	}
	st := m.Status()
	if len(st.Attempts) != 2 || st.Attempts[0].Err == "" || st.Attempts[1].Err == "" || st.LastError == "" {
		t.Fatalf("status %+v", st)
	}
	if clk.Pending() != 1 {
		t.Fatal("no retry scheduled")
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]portmap.Config{
		"no port":  {},
		"protocol": {InternalPort: 1, Protocols: []portmap.Protocol{"stun"}},
		"peers":    {InternalPort: 1, Peers: make([]netip.AddrPort, 5)},
	} {
		if _, err := portmap.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
