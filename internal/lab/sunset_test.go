package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// nativeHostV4 and nativeHostV6 are the addresses of the internet host with
// native IPv6 in TestTeredoSocksSunset.
var (
	nativeHostV4 = netip.MustParseAddr("198.18.0.8")
	nativeHostV6 = netip.MustParseAddr("2001:db8:1::8")
)

// sunsetStatus is the part of teredo-socks's GET /status that
// TestTeredoSocksSunset reads.
type sunsetStatus struct {
	State    string `json:"state"`
	IPv6Path string `json:"ipv6_path"`
	// Counters is the flat "counters" object every role's /status has.
	Counters map[string]uint64 `json:"counters"`
}

func (s *socksProc) sunsetStatus(t testing.TB) sunsetStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+socksStatusAddr+"/status", nil)
	resp, err := s.Host.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-socks /status on %s: %v", s.Host.Name, err)
	}
	defer resp.Body.Close()
	var st sunsetStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("teredo-socks /status on %s: %v", s.Host.Name, err)
	}
	return st
}

// teredoSent is what the Teredo client sent of IPv6 data: packets handed
// to the socket at once, queued for a pending peer, and the link's count.
func (st sunsetStatus) teredoSent() uint64 {
	c := st.Counters
	return c["tx_fast"] + c["tx_queued"] + c["link_tx_packets"]
}

// TestTeredoSocksSunset checks -ipv6 auto (RFC 4380 §5.5): teredo-socks on
// an internet host with a global IPv6 address and a default IPv6 route
// fetches from the IPv6-only host natively, from its own address, with
// nothing sent through Teredo; on a client behind a home router with no
// IPv6 it goes through Teredo and the relay.
func TestTeredoSocksSunset(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl")
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	srv := impl.start(t, l)
	startOurRelay(t, l.Relay)
	native, err := l.AddInternetHost("n6", []netip.Addr{nativeHostV4}, []netip.Addr{nativeHostV6})
	if err != nil {
		t.Fatal(err)
	}
	// A default route makes the host's IPv6 global, as a provider's would.
	if err := native.RouteVia(netip.MustParsePrefix("::/0"), RelayV6); err != nil {
		t.Fatal(err)
	}

	// The IPv6-only host answers with the address the request came from.
	ln := l.V6Host.listenHTTP(t, "whoami", netip.AddrPortFrom(V6HostAddr, 8083))
	who := l.V6Host.serveHTTP(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		fmt.Fprint(w, ap.Addr())
	}))
	url := "http://" + who.String() + "/"
	fetch := func(t *testing.T, s *socksProc) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := s.Host.Run(ctx, "curl", "-sS", "--max-time", "20", "--socks5-hostname", socksListen, url)
		if err != nil {
			t.Fatalf("curl through teredo-socks on %s: %v", s.Host.Name, err)
		}
		return strings.TrimSpace(out)
	}

	t.Run("native", func(t *testing.T) {
		s := startSocks(t, native, srv.Primary, "-status", socksStatusAddr)
		st0 := s.sunsetStatus(t)
		if st0.IPv6Path != "native" {
			t.Fatalf("ipv6_path %q with a global IPv6 route, want native", st0.IPv6Path)
		}
		if got := fetch(t, s); got != nativeHostV6.String() {
			t.Fatalf("the IPv6-only host saw the request from %q, want the native address %v", got, nativeHostV6)
		}
		if st := s.sunsetStatus(t); st.teredoSent() != st0.teredoSent() {
			t.Errorf("Teredo sent %d packets during a native fetch: %v", st.teredoSent()-st0.teredoSent(), st.Counters)
		}
	})
	t.Run("teredo", func(t *testing.T) {
		s := startSocks(t, l.Clients["a1"], srv.Primary, "-status", socksStatusAddr)
		routeVia(t, l.V6Host, s.Addr, RelayV6)
		st0 := s.sunsetStatus(t)
		if st0.IPv6Path != "teredo" {
			t.Fatalf("ipv6_path %q without IPv6, want teredo", st0.IPv6Path)
		}
		if got := fetch(t, s); got != s.Addr.String() {
			t.Fatalf("the IPv6-only host saw the request from %q, want the Teredo address %v", got, s.Addr)
		}
		if st := s.sunsetStatus(t); st.teredoSent() == st0.teredoSent() {
			t.Errorf("nothing went through Teredo: %v", st.Counters)
		}
	})
}
