package lab

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// socksServingRE is teredo-socks's line when it serves before Teredo has
// qualified.
var socksServingRE = regexp.MustCompile(`teredo-socks: SOCKS5 on (\S+); IPv6 destinations get "network unreachable" until Teredo qualifies`)

// healthz returns the code and body of GET /healthz of a teredo-socks started
// with -status socksStatusAddr.
func (s *socksProc) healthz(t testing.TB) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+socksStatusAddr+"/healthz", nil)
	resp, err := s.Host.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-socks /healthz on %s: %v", s.Host.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// TestTeredoSocksNeverGivesUp starts teredo-socks before its Teredo server
// runs: it serves SOCKS5 at once, refuses IPv6 with reply 3 (network
// unreachable) at once, and /healthz says 503. Once the server starts, the
// client's next router solicitation qualifies it without a restart:
// /healthz says 200 and a download from the IPv6-only host works.
func TestTeredoSocksNeverGivesUp(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl")
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	startOurRelay(t, l.Relay)
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 1<<20)
	BuildCommand(t, "./"+ourServerDir) // so that the server starts without delay below
	h := l.Clients["a1"]

	s := &socksProc{Host: h}
	start := time.Now()
	s.Proc = h.Start(t, BuildCommand(t, "./"+ourSocksDir), "-server", l.Server.IPv4[0].String(), "-listen", socksListen, "-status", socksStatusAddr)
	if _, err := s.Proc.WaitLine(socksServingRE, 10*time.Second); err != nil {
		t.Fatalf("teredo-socks: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	asked := time.Now()
	_, err := socksConnect(ctx, h, socksListen, f.Addr)
	if err == nil || !strings.Contains(err.Error(), "reply code 3") {
		t.Fatalf("CONNECT to %v before qualification: %v, want reply code 3", f.Addr, err)
	}
	refused := time.Since(asked)
	if refused > time.Second {
		t.Errorf("reply 3 took %v", refused)
	}
	if code, body := s.healthz(t); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz before qualification: %d %q", code, body)
	}

	srv := impl.start(t, l)
	serverUp := time.Since(start)
	m, err := s.Proc.WaitLine(socksReadyRE, DefaultQualifyTimeout)
	if err != nil {
		t.Fatalf("teredo-socks did not qualify once the server ran: %v", err)
	}
	s.Addr = netip.MustParseAddr(m[1])
	t.Logf("reply 3 in %v; server up %v after start, qualified %v after start via %v", refused, serverUp.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), srv.Primary)
	routeVia(t, l.V6Host, s.Addr, RelayV6)
	if code, body := s.healthz(t); code != http.StatusOK {
		t.Fatalf("/healthz once qualified: %d %q", code, body)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	got, err := h.Curl(dctx, f.URL, "--socks5-hostname", socksListen)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(got); err != nil {
		t.Fatal(err)
	}
}
