package lab

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/proto"
)

// socksStatusAddr is where teredo-socks serves GET /status inside its namespace.
const socksStatusAddr = "127.0.0.1:9546"

var (
	socksChangedRE = regexp.MustCompile(`teredo-socks: address changed from (\S+) to (\S+)`)
	socksLostRE    = regexp.MustCompile(`teredo-socks: lost Teredo connectivity`)
)

// socksStatus is the part of teredo-socks's GET /status that tests read.
type socksStatus struct {
	State   string `json:"state"`
	Address string `json:"address"`
	Mapped  string `json:"mapped"`
}

// status reads GET /status of a teredo-socks started with -status socksStatusAddr.
func (s *socksProc) status(t testing.TB) socksStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+socksStatusAddr+"/status", nil)
	resp, err := s.Host.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-socks /status: %v", err)
	}
	defer resp.Body.Close()
	var st socksStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("teredo-socks /status: %v", err)
	}
	return st
}

// serverFlow returns the NAT's entry for the client's flow from local to the server.
func serverFlow(t testing.TB, ctx context.Context, h *Host, local netip.AddrPort, srv netip.Addr) Flow {
	t.Helper()
	flows, err := h.NAT.ClientFlows(ctx, local, netip.AddrPortFrom(srv, proto.Port))
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("%d conntrack entries from %v to the server, want 1: %+v", len(flows), local, flows)
	}
	return flows[0]
}

// TestTeredoSocksRebinding has the home router in front of teredo-socks give the
// client's socket a new public port (a NAT rebinding: new rule, conntrack flushed).
// The client's next refresh must find the new mapping, teredo-socks must announce the
// new address, which carries exactly the port conntrack shows, show it on /status, and
// a download through SOCKS5 must work again on it.
func TestTeredoSocksRebinding(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl")
	const size = 4 << 20
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	srv := impl.start(t, l)
	relay := startOurRelay(t, l.Relay)
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), size)
	h := l.Clients["a1"]
	s := startSocks(t, h, srv.Primary, "-status", socksStatusAddr)
	routeVia(t, l.V6Host, s.Addr, RelayV6)

	download := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		got, err := h.Curl(ctx, f.URL, "--socks5-hostname", socksListen)
		if err != nil {
			t.Fatalf("%s: %v\nrelay: %v\nteredo-socks: %+v", what, err, relay.status(t), s.status(t))
		}
		if err := f.Verify(got); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %d bytes in %v", what, got.Size, time.Since(start).Round(time.Millisecond))
	}
	download("download before the rebinding")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	old, ok := proto.ParseAddress(s.Addr)
	if !ok {
		t.Fatalf("qualified as %v, not a Teredo address", s.Addr)
	}
	before := serverFlow(t, ctx, h, netip.AddrPortFrom(h.IPv4[0], 0), srv.Primary)
	if before.Mapped() != old.Mapped {
		t.Fatalf("Teredo address %v carries mapping %v, conntrack shows %v", s.Addr, old.Mapped, before.Mapped())
	}
	local := before.Orig.Src // teredo-socks's UDP socket, which keeps its port
	// Linux's ephemeral ports start at 32768, so this port is new to the client.
	newPort := uint16(20000)
	if old.Mapped.Port() == newPort {
		newPort++
	}
	if err := h.NAT.RemapUDP(ctx, local, newPort); err != nil {
		t.Fatal(err)
	}
	if err := h.NAT.FlushConntrack(ctx); err != nil {
		t.Fatal(err)
	}
	rebound := time.Now()

	// The next refresh comes at 75-100 % of the interval after the last RA; allow
	// for a lost RS and its retransmissions.
	wait := client.RefreshInterval + 2*client.QualificationDelay + 5*time.Second
	m, err := s.Proc.WaitLine(socksChangedRE, wait)
	if err != nil {
		t.Fatalf("after the NAT gave %v the public port %d: %v", local, newPort, err)
	}
	t.Logf("address changed %v after the rebinding: %s", time.Since(rebound).Round(time.Millisecond), m[0])
	if m[1] != s.Addr.String() {
		t.Errorf("changed from %s, want from %v", m[1], s.Addr)
	}
	newIP, err := netip.ParseAddr(m[2])
	if err != nil {
		t.Fatalf("new address %q: %v", m[2], err)
	}
	na, ok := proto.ParseAddress(newIP)
	if !ok {
		t.Fatalf("new address %v is not a Teredo address", newIP)
	}
	want := netip.AddrPortFrom(h.NAT.WAN, newPort)
	if na.Mapped != want || na.Server != srv.Primary {
		t.Errorf("new address %v carries mapping %v and server %v, want %v and %v", newIP, na.Mapped, na.Server, want, srv.Primary)
	}
	if after := serverFlow(t, ctx, h, local, srv.Primary); after.Mapped() != na.Mapped {
		t.Errorf("conntrack maps %v to the server as %v, the new address carries %v", local, after.Mapped(), na.Mapped)
	}
	if st := s.status(t); st.State != "qualified" || st.Address != newIP.String() || st.Mapped != want.String() {
		t.Errorf("/status: %+v, want qualified as %v with mapping %v", st, newIP, want)
	}

	routeVia(t, l.V6Host, newIP, RelayV6)
	download("download after the rebinding")
	flows, err := h.NAT.ClientFlows(ctx, local, relay.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].Mapped() != want {
		t.Errorf("conntrack entries from %v to the relay: %+v, want one mapped to %v", local, flows, want)
	}
	if socksLostRE.MatchString(s.Proc.Output()) {
		t.Errorf("teredo-socks went offline instead of following the new mapping:\n%s", tail(s.Proc.Output()))
	}
}
