package lab

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/internal/echo"
)

// symRelayPair is one connection of TestPeerRelaySymmetric: from's teredo-socks
// connects through its SOCKS5 port to the -forward port of to's.
type symRelayPair struct {
	name     string
	from, to *socksProc
	wantOK   bool
}

// TestPeerRelaySymmetric: the project's client behind the symmetric NAT (c) and the
// project's client behind a home router (a, port-restricted) reach each other's
// -forward service (a TCP echo of 64 KiB), both ways, through the project's relay
// with -hairpin, because each falls back to the relay when its direct bubbles go
// unanswered and accepts the other through the relay once an echo test through the
// server proves that path (client/peerrelay.go). Direct bubbles cannot work: a's
// NAT filters by address and port, and c's port towards a is one a never saw.
//
// Four pairs run at once, each fresh, so that one direction does not open the
// way for the other: c1 → a1, c1 knowing the relay from a native download (the
// relay its echo test found); c3 → a3, c3 with -relay, so that its first packet
// to the relay comes from a mapping the relay never saw (the relay's challenge);
// a2 → c2, a2 with -relay; and the control, c0 ↔ a0 with -peer-relay=false (and
// -relay), which fails both ways.
func TestPeerRelaySymmetric(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl")
	const size = 64 << 10
	l := New(t, Options{Clients: []ClientSpec{
		{"c1", Symmetric}, {"a1", HomeRouter},
		{"c2", Symmetric}, {"a2", HomeRouter},
		{"c3", Symmetric}, {"a3", HomeRouter},
		{"c0", Symmetric}, {"a0", HomeRouter},
	}})
	srv := impl.start(t, l)
	r := startOurRelay(t, l.Relay, "-hairpin")
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 64<<10)

	services := map[string]*echo.Server{}
	for name, h := range l.Clients {
		local, err := h.Listen("tcp4", "127.0.0.1:9000")
		if err != nil {
			t.Fatal(err)
		}
		es := echo.Serve(local, 20*time.Second)
		t.Cleanup(func() { es.Close() })
		services[name] = es
	}
	relay := r.Addr.String()
	args := map[string][]string{
		"c1": nil, "a1": nil,
		"c2": nil, "a2": {"-relay", relay},
		"c3": {"-relay", relay}, "a3": nil,
		"c0": {"-peer-relay=false", "-relay", relay}, "a0": {"-peer-relay=false", "-relay", relay},
	}
	socks := map[string]*socksProc{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, extra := range args {
		wg.Go(func() {
			s := startSocks(t, l.Clients[name], srv.Primary, append([]string{
				"-forward", "8000=127.0.0.1:9000", "-status", socksStatusAddr, "-portmap=false"}, extra...)...)
			mu.Lock()
			socks[name] = s
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(socks) != len(args) {
		t.FailNow() // startSocks reported why
	}
	for _, name := range []string{"c1", "c2", "c3", "c0"} {
		if _, err := socks[name].Proc.WaitLine(regexp.MustCompile(`NAT type: symmetric`), 15*time.Second); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// c1 learns its relay as any client does: from the echo test of a native
	// destination.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	got, err := socks["c1"].Host.Curl(ctx, f.URL, "--socks5-hostname", socksListen)
	cancel()
	if err == nil {
		err = f.Verify(got)
	}
	if err != nil {
		t.Fatalf("c1's native download: %v", err)
	}
	before := r.status(t)

	pairs := []symRelayPair{
		{"c1 → a1", socks["c1"], socks["a1"], true},
		{"a2 → c2", socks["a2"], socks["c2"], true},
		{"c3 → a3", socks["c3"], socks["a3"], true},
		{"c0 → a0 (-peer-relay=false)", socks["c0"], socks["a0"], false},
		{"a0 → c0 (-peer-relay=false)", socks["a0"], socks["c0"], false},
	}
	errs := make([]error, len(pairs))
	took := make([]time.Duration, len(pairs))
	for i, p := range pairs {
		wg.Go(func() {
			start := time.Now()
			errs[i] = symRelayEcho(p, size)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, p := range pairs {
		switch {
		case p.wantOK && errs[i] != nil:
			t.Errorf("%s (%v → [%v]:8000): %v after %v\n%s:\n%s\n%s:\n%s", p.name, p.from.Addr, p.to.Addr, errs[i], took[i].Round(time.Millisecond),
				p.from.Host.Name, tail(p.from.Proc.Output()), p.to.Host.Name, tail(p.to.Proc.Output()))
		case !p.wantOK && errs[i] == nil:
			t.Errorf("%s: the echo went through without the peer relay", p.name)
		case p.wantOK:
			t.Logf("%s: %d bytes echoed, connection included, in %v", p.name, size, took[i].Round(time.Millisecond))
		default:
			t.Logf("%s: fails as expected after %v: %v", p.name, took[i].Round(time.Millisecond), errs[i])
		}
	}
	for _, name := range []string{"a1", "c2", "a3"} {
		if n := services[name].Accepted.Load(); n != 1 {
			t.Errorf("%s's service accepted %d connections, want 1", name, n)
		}
	}
	for _, name := range []string{"a0", "c0"} {
		if n := services[name].Accepted.Load(); n != 0 {
			t.Errorf("%s's service accepted %d connections without the peer relay", name, n)
		}
	}
	// What each side did: the initiators fell back to the relay, both sides proved
	// the relay path, and the relay carried the packets between them.
	for _, c := range []struct {
		host, counter string
	}{
		{"c1", "peer_relay_fallback"}, {"c1", "peer_relay_path_proved"}, {"c1", "rx_server_echo_requests"}, {"c1", "tx_peer_relay"},
		{"a1", "peer_relay_path_proved"}, {"a1", "rx_server_echo_requests"},
		{"c3", "peer_relay_fallback"}, {"c3", "peer_relay_path_proved"},
		{"a2", "peer_relay_fallback"}, {"a2", "peer_relay_path_proved"}, {"a2", "rx_server_echo_requests"},
		{"c2", "peer_relay_path_proved"}, {"c2", "rx_server_echo_requests"},
	} {
		if v := socksClientCounter(t, socks[c.host], c.counter); v == 0 {
			t.Errorf("%s: %s is 0", c.host, c.counter)
		}
	}
	for _, name := range []string{"c0", "a0"} {
		if v := socksClientCounter(t, socks[name], "peer_relay_fallback"); v != 0 {
			t.Errorf("%s: %d peer relay fallbacks with -peer-relay=false", name, v)
		}
	}
	after := r.status(t)
	t.Logf("relay: %v", after)
	if n := after.Counters["rx_hairpinned"] - before.Counters["rx_hairpinned"]; n < 3*2*size/1280 {
		t.Errorf("the relay hairpinned %d packets, want at least %d", n, 3*2*size/1280)
	}
	if after.Counters["peer_challenged"] == 0 {
		t.Errorf("the relay challenged no client behind the symmetric NAT: %v", after)
	}
}

// symRelayEcho connects from p.from's SOCKS5 port to p.to's -forward port and
// echoes size bytes.
func symRelayEcho(p symRelayPair, size int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !p.wantOK {
		// The client gives up after its 4 bubbles (8 s): no need to wait longer.
		ctx, cancel = context.WithTimeout(ctx, 12*time.Second)
		defer cancel()
	}
	dst := netip.AddrPortFrom(p.to.Addr, 8000)
	conn, err := socksConnect(ctx, p.from.Host, socksListen, dst)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	_, err = echo.Check(ctx, conn, size, 11)
	return err
}
