package lab

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// serverImpl starts one Teredo server implementation on the lab's server host.
type serverImpl struct {
	name    string
	require func(t *testing.T) // skips or fails before any topology is built
	start   func(t *testing.T, l *Lab) *TeredoServer
}

// ourServerDir is the project's server command, relative to the module root.
const ourServerDir = "cmd/teredo-server"

// serverImpls are the servers that the interoperability tests run against: Miredo's
// reference server and the project's own.
var serverImpls = []serverImpl{
	{
		name:    "miredo-server",
		require: func(t *testing.T) { Require(t, "miredo", "miredo-server", "ss") },
		start:   func(t *testing.T, l *Lab) *TeredoServer { return StartMiredoServer(t, l.Server) },
	},
	{
		name: "teredo-server",
		require: func(t *testing.T) {
			requireOurServer(t)
			Require(t, "miredo", "ss")
		},
		start: func(t *testing.T, l *Lab) *TeredoServer {
			return StartTeredoServer(t, l.Server, BuildCommand(t, "./cmd/teredo-server"), "-v")
		},
	},
}

// requireOurServer skips while the project's server command does not exist yet; once
// the directory exists, a build failure fails the test.
func requireOurServer(t testing.TB) {
	t.Helper()
	requireFile(t, ourServerDir)
}

// requireFile skips while the project command in dir (relative to the module root)
// does not exist yet; once it exists, a build failure fails the test.
func requireFile(t testing.TB, dir string) {
	t.Helper()
	// go test runs the binary in the package directory, internal/lab, two below
	// the module root.
	if _, err := os.Stat(filepath.Join("..", "..", dir, "main.go")); err != nil {
		t.Skipf("%s does not exist yet: the variant of this test that runs it waits for it", dir)
	}
}

// TestMiredoQualifies checks that a Miredo client qualifies behind home-router,
// symmetric and full-cone NATs, and that its Teredo address carries the server's
// primary address and exactly the mapping the NAT assigned (read from conntrack).
func TestMiredoQualifies(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			l := New(t, Options{
				Clients:  []ClientSpec{{"a1", HomeRouter}, {"c", Symmetric}, {"d", FullCone}},
				NoRelay:  true,
				NoV6Host: true,
			})
			srv := impl.start(t, l)
			for _, name := range []string{"a1", "c", "d"} {
				t.Run(name, func(t *testing.T) {
					h := l.Clients[name]
					start := time.Now()
					c := StartMiredoClient(t, h, srv.Primary, MiredoClientOptions{})
					t.Logf("%s client qualified in %v as %v (server %v, mapped %v)", h.NAT.Kind, time.Since(start).Round(time.Millisecond), c.Addr, c.Teredo.Server, c.Teredo.Mapped)
					checkTeredoAddr(t, h, srv, c)
				})
			}
		})
	}
}

// checkTeredoAddr compares a client's Teredo address with the NAT's real mapping.
func checkTeredoAddr(t *testing.T, h *Host, srv *TeredoServer, c *MiredoClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.Teredo.Server != srv.Primary {
		t.Errorf("Teredo address %v names server %v, want %v", c.Addr, c.Teredo.Server, srv.Primary)
	}
	if !proto.Prefix.Contains(c.Addr) {
		t.Errorf("Teredo address %v outside %v", c.Addr, proto.Prefix)
	}
	flows, err := h.NAT.ClientFlows(ctx, netip.AddrPortFrom(h.IPv4[0], c.Local), netip.AddrPortFrom(srv.Primary, proto.Port))
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("want exactly one conntrack flow from %v to %v:%d, got %+v", h.IPv4[0], srv.Primary, proto.Port, flows)
	}
	if got, want := c.Teredo.Mapped, flows[0].Mapped(); got != want {
		t.Errorf("Teredo address %v carries mapping %v; the NAT assigned %v", c.Addr, got, want)
	}
	if c.Teredo.Mapped.Addr() != h.NAT.WAN {
		t.Errorf("mapped address %v is not the NAT's WAN address %v", c.Teredo.Mapped.Addr(), h.NAT.WAN)
	}
	if h.NAT.Kind == FullCone && c.Teredo.Mapped.Port() != h.NAT.ConePort {
		t.Errorf("full-cone mapping %v does not use the cone port %d", c.Teredo.Mapped, h.NAT.ConePort)
	}
}

// TestMiredoClientToClient has two Miredo clients behind two home-router NATs ping
// each other: the first packets are held while the server relays indirect bubbles
// that open both NATs.
func TestMiredoClientToClient(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			l := New(t, Options{
				Clients:  []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}},
				NoRelay:  true,
				NoV6Host: true,
			})
			srv := impl.start(t, l)
			c1 := StartMiredoClient(t, l.Clients["a1"], srv.Primary, MiredoClientOptions{})
			c2 := StartMiredoClient(t, l.Clients["a2"], srv.Primary, MiredoClientOptions{})
			pingTeredo(t, c1, c2)
			pingTeredo(t, c2, c1)
			// The replies must have come straight through both NATs, not via the server.
			for _, p := range [][2]*MiredoClient{{c1, c2}, {c2, c1}} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				flows, err := p[0].Host.NAT.ClientFlows(ctx, netip.AddrPortFrom(p[0].Host.IPv4[0], 0), p[1].Teredo.Mapped)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if len(flows) != 1 || flows[0].Mapped() != p[0].Teredo.Mapped {
					t.Errorf("NAT of %s: want one direct flow to the peer's mapping %v from our mapping %v, got %+v", p[0].Host.Name, p[1].Teredo.Mapped, p[0].Teredo.Mapped, flows)
				}
			}
		})
	}
}

// pingTeredo pings to's Teredo address from from's host, within a bounded time.
func pingTeredo(t *testing.T, from, to *MiredoClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	rtt, err := from.Host.Ping(ctx, to.Addr, 500*time.Millisecond)
	if err != nil {
		t.Fatalf("%s → %s: %v", from.Host.Name, to.Host.Name, err)
	}
	t.Logf("%s (%v) → %s (%v): first reply after %v, rtt %v", from.Host.Name, from.Addr, to.Host.Name, to.Addr, time.Since(start).Round(time.Millisecond), rtt)
}
