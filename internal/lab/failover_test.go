package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// failoverLab is two of the project's relays, both announcing the Teredo
// prefix, and teredo-socks behind a home router downloading or uploading
// through the first.
type failoverLab struct {
	l      *Lab
	r1, r2 *ourRelay
	s      *socksProc
}

// newFailoverLab builds the topology: the project's server, teredo-relay on
// rly (relay 1) and on rly2 (relay 2), the IPv6-only host routing 2001::/32
// to relay 1, as the nearer of two relays that announce it, and teredo-socks
// with its status endpoint on a1.
func newFailoverLab(t *testing.T) *failoverLab {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl")
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	srv := impl.start(t, l)
	h2, err := l.AddInternetHost("rly2", []netip.Addr{secondRelayV4}, []netip.Addr{secondRelayV6})
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.EnableForwarding(); err != nil {
		t.Fatal(err)
	}
	f := &failoverLab{l: l, r1: startOurRelay(t, l.Relay), r2: startOurRelay(t, h2)}
	f.s = startSocks(t, l.Clients["a1"], srv.Primary, "-status", socksStatusAddr)
	return f
}

// killRelay1 is relay 1's host dying: the relay process is killed, its host
// drops off the network (nothing answers, not even an ICMP error), and its
// announcement of 2001::/32 is withdrawn, so the IPv6-only host's route moves
// to relay 2, as BGP would move it on the internet.
func (f *failoverLab) killRelay1(t *testing.T) {
	if err := f.r1.Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("killing relay 1: %v", err)
	}
	f.l.Relay.MustRun(t, "ip", "link", "set", "eth0", "down")
	if err := f.l.V6Host.RouteVia(TeredoPrefix, secondRelayV6); err != nil {
		t.Fatal(err)
	}
}

// socksClientCounter reads one of teredo-socks's client counters from its
// GET /status.
func socksClientCounter(t testing.TB, s *socksProc, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+socksStatusAddr+"/status", nil)
	resp, err := s.Host.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-socks /status: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("teredo-socks /status: %v", err)
	}
	v, ok := st.Counters[name]
	if !ok {
		t.Fatalf("teredo-socks /status has no client counter %q: %v", name, st.Counters)
	}
	return v
}

// waitRelayCounter polls a relay's counter until it reaches min, and returns
// how long that took; it gives up after timeout or when done closes first.
func waitRelayCounter(t *testing.T, r *ourRelay, name string, min uint64, timeout time.Duration, done <-chan struct{}) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		if v := r.status(t).Counters[name]; v >= min {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s of the relay on %s stayed below %d for %v: %v", name, r.Host.Name, min, timeout, r.status(t).Counters)
		}
		select {
		case <-done:
			if v := r.status(t).Counters[name]; v >= min {
				return time.Since(start), nil
			}
			return 0, fmt.Errorf("the transfer ended before %s of the relay on %s reached %d: %v", name, r.Host.Name, min, r.status(t).Counters)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestRelayFailover kills the relay a transfer goes through, mid-transfer, and
// withdraws its route: the transfer completes through the other relay, the
// data checked end to end, and traffic reaches the other relay within
// failoverBound of the kill.
//
// The upload is the case the client's failover exists for: nothing comes
// back once relay 1 is gone, and before the client noticed a silent relay
// it kept sending to it until the peer entry's validity ran out (relay 2
// saw the upload 25.5 s after the kill with the check disabled). In the
// download the IPv6-only host's retransmissions arrive through relay 2, whose
// packets already make the client run the echo test (RFC 4380 §5.2.3 case
// 6, Miredo's stricter form).
func TestRelayFailover(t *testing.T) {
	const (
		rate      = "4M"    // curl --limit-rate, in bytes a second
		killAfter = 3 << 20 // bytes through relay 1 before it dies
		// failoverBound: the client notices at the retransmission 3 or
		// 6.2 s after the failure (see client/failover.go), and the echo
		// test and relay 2's bubbles take a few round trips.
		failoverBound = 10 * time.Second
	)
	for _, tc := range []struct {
		name string
		size int64 // the download fills buffers of several MB at once
		// killAt is the earliest kill, after the start: the upload is
		// killed in its steady state; the download at once, as within a
		// second the proxy's receive buffers have taken most of the file.
		killAt  time.Duration
		counter string // the relays' counter of the transfer's packets
		// prepare sets up the servers and returns the transfer, which
		// runs on another goroutine.
		prepare func(t *testing.T, f *failoverLab, size int64) func(ctx context.Context) error
	}{
		// 64 MiB: the host's kernel pushes the download into the proxy's
		// TCP buffers and the loopback sockets to curl far faster than
		// curl's 4 MB/s reads, and a 24 MiB file sometimes fitted whole
		// before the kill (CI, 2026-12-06: relay 1 had carried it all).
		{"download", 64 << 20, 0, "tx_forwarded", func(t *testing.T, f *failoverLab, size int64) func(ctx context.Context) error {
			fs := f.l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), size)
			return func(ctx context.Context) error {
				got, err := f.s.Host.Curl(ctx, fs.URL, "--socks5-hostname", socksListen, "--limit-rate", rate)
				if err != nil {
					return err
				}
				return fs.Verify(got)
			}
		}},
		{"upload", 12 << 20, time.Second, "rx_forwarded", func(t *testing.T, f *failoverLab, size int64) func(ctx context.Context) error {
			up := f.l.V6Host.ServeUpload(t, netip.AddrPortFrom(V6HostAddr, 8081))
			file := filepath.Join(t.TempDir(), "upload.bin")
			want, err := WriteFile(file, size)
			if err != nil {
				t.Fatal(err)
			}
			return func(ctx context.Context) error {
				got, err := f.s.Host.CurlUpload(ctx, up.URL, file, "--socks5-hostname", socksListen, "--limit-rate", rate)
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("the server received %d bytes sha256 %s, want %d bytes sha256 %s", got.Size, got.SHA256, want.Size, want.SHA256)
				}
				return nil
			}
		}},
	} {
		size := tc.size
		t.Run(tc.name, func(t *testing.T) {
			f := newFailoverLab(t)
			transfer := tc.prepare(t, f, size)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			done := make(chan struct{})
			var err error
			go func() {
				defer close(done)
				err = transfer(ctx)
			}()
			if _, werr := waitRelayCounter(t, f.r1, tc.counter, killAfter/1280, 15*time.Second, done); werr != nil {
				<-done
				t.Fatalf("%v (transfer: %v)", werr, err)
			}
			select {
			case <-time.After(tc.killAt - time.Since(start)):
			case <-done:
				t.Fatalf("the transfer ended within %v (transfer: %v)", tc.killAt, err)
			}
			before := f.r2.status(t).Counters[tc.counter]
			// What relay 1 carried; the rest (a download fills buffers of
			// many MB at once, so it can be most) must go through relay 2.
			carried := f.r1.status(t).Counters[tc.counter]
			rest := int64(size/1280) - int64(carried)
			if rest < 1000 {
				t.Fatalf("relay 1 carried all but %d packets before it was killed: nothing left to fail over", rest)
			}
			f.killRelay1(t)
			killed := time.Now()
			t.Logf("relay 1 killed after %v, having carried %d packets", killed.Sub(start).Round(time.Millisecond), carried)
			// Traffic has moved once relay 2 carried 100 of the transfer's
			// packets.
			moved, werr := waitRelayCounter(t, f.r2, tc.counter, before+100, failoverBound, done)
			if werr != nil {
				cancel()
				<-done
				t.Fatalf("%v; client relay_failovers %d (transfer: %v)", werr, socksClientCounter(t, f.s, "relay_failovers"), err)
			}
			select {
			case <-done:
			case <-ctx.Done():
				<-done
			}
			if err != nil {
				t.Fatal(err)
			}
			failovers := socksClientCounter(t, f.s, "relay_failovers")
			st2 := f.r2.status(t)
			t.Logf("%s of %d bytes verified in %v; traffic through relay 2 %v after the kill; %s of relay 2: %d; client relay_failovers %d",
				tc.name, size, time.Since(start).Round(time.Millisecond), moved.Round(time.Millisecond),
				tc.counter, st2.Counters[tc.counter]-before, failovers)
			// The rest of the transfer went through relay 2 (packets carry
			// at most 1208 bytes of TCP data, so rest is low).
			if n := st2.Counters[tc.counter] - before; n < uint64(rest) {
				t.Errorf("relay 2 carried only %d packets of the transfer, want at least %d", n, rest)
			}
			if tc.name == "upload" && failovers == 0 {
				t.Errorf("the client counted no relay failover")
			}
		})
	}
}
