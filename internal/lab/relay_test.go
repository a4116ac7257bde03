package lab

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// TestMiredoRelayDownload has a Miredo client behind a home router download a file
// from the IPv6-only host: the client finds the Miredo relay through the server's echo
// test (the server sends the client's echo request to native IPv6), and the file arrives intact both through curl and through the test process's
// own HTTP client in the client's namespace.
func TestMiredoRelayDownload(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			Require(t, "curl")
			relayDownload(t, impl)
		})
	}
}

func relayDownload(t *testing.T, impl serverImpl) {
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	srv := impl.start(t, l)
	StartMiredoRelay(t, l.Relay, MiredoRelayOptions{})
	c := StartMiredoClient(t, l.Clients["a1"], srv.Primary, MiredoClientOptions{})
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	// The first packets to a native host wait for the echo test; ping until it is done.
	pctx, pcancel := context.WithTimeout(ctx, 15*time.Second)
	rtt, err := c.Host.Ping(pctx, V6HostAddr, 500*time.Millisecond)
	pcancel()
	if err != nil {
		t.Fatalf("Teredo client cannot reach the IPv6-only host: %v", err)
	}
	t.Logf("ping %v → %v: %v", c.Addr, V6HostAddr, rtt)

	start := time.Now()
	got, err := c.Host.Curl(ctx, f.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(got); err != nil {
		t.Fatal(err)
	}
	t.Logf("curl: %d bytes in %v", got.Size, time.Since(start).Round(time.Millisecond))

	got, err = Download(ctx, c.Host.HTTPClient(), f.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(got); err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(Digest{Size: got.Size, SHA256: "00"}); err == nil {
		t.Fatal("Verify accepted a wrong digest")
	}
}

// BenchmarkMiredoRelayDownload measures HTTP download throughput from the IPv6-only
// host to a Miredo client behind a home router through a Miredo relay: the reference
// figure for the project's own client and relay.
func BenchmarkMiredoRelayDownload(b *testing.B) {
	Require(b, "miredo", "miredo-server", "ss", "curl")
	const size = 16 << 20
	l := New(b, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	srv := StartMiredoServer(b, l.Server)
	StartMiredoRelay(b, l.Relay, MiredoRelayOptions{})
	c := StartMiredoClient(b, l.Clients["a1"], srv.Primary, MiredoClientOptions{})
	f := l.V6Host.ServeFile(b, netip.AddrPortFrom(V6HostAddr, 8080), size)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, 15*time.Second)
	_, err := c.Host.Ping(pctx, V6HostAddr, 500*time.Millisecond)
	pcancel()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		got, err := c.Host.Curl(ctx, f.URL)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Verify(got); err != nil {
			b.Fatal(err)
		}
	}
}
