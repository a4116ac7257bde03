package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// ourRelayDir is the project's relay command, relative to the module root.
const ourRelayDir = "cmd/teredo-relay"

// relayStatusAddr is where teredo-relay serves GET /status inside its host.
const relayStatusAddr = "127.0.0.1:9545"

var relayReadyRE = regexp.MustCompile(`teredo-relay: ready on (\S+), tun (\S+)`)

// ourRelay is the project's teredo-relay running on a lab host.
type ourRelay struct {
	Proc *Proc
	Host *Host
	Addr netip.AddrPort
	Tun  string
}

// startOurRelay runs teredo-relay on h's first IPv4 address, port 3544, with a TUN
// device and the status endpoint, and waits until it is ready and its TUN routes the
// Teredo prefix.
func startOurRelay(t testing.TB, h *Host, extra ...string) *ourRelay {
	t.Helper()
	if len(h.IPv4) == 0 {
		t.Fatalf("lab: %s has no IPv4 address for a relay", h.Name)
	}
	bind := netip.AddrPortFrom(h.IPv4[0], proto.Port)
	args := append([]string{"-bind", bind.String(), "-tun", "teredo", "-status", relayStatusAddr, "-v"}, extra...)
	r := &ourRelay{Host: h, Tun: "teredo"}
	r.Proc = h.Start(t, BuildCommand(t, "./"+ourRelayDir), args...)
	m, err := r.Proc.WaitLine(relayReadyRE, 10*time.Second)
	if err != nil {
		t.Fatalf("teredo-relay on %s: %v", h.Name, err)
	}
	if r.Addr, err = netip.ParseAddrPort(m[1]); err != nil || r.Addr != bind {
		t.Fatalf("teredo-relay on %s: ready on %q, want %v", h.Name, m[1], bind)
	}
	if m[2] != r.Tun {
		t.Fatalf("teredo-relay on %s: tun %q, want %q", h.Name, m[2], r.Tun)
	}
	out := h.MustRun(t, "ip", "-6", "route", "show", "dev", r.Tun)
	if !strings.Contains(out, proto.Prefix.String()) {
		t.Fatalf("teredo-relay on %s: no %v route on %s: %q", h.Name, proto.Prefix, r.Tun, out)
	}
	return r
}

// relayStatus is the part of the relay's GET /status that tests read.
type relayStatus struct {
	State        string            `json:"state"`
	Version      string            `json:"version"`
	Drops        map[string]uint64 `json:"drops"`
	Addr         string            `json:"addr"`
	HostSpecific bool              `json:"host_specific"`
	Peers        int               `json:"peers"`
	Counters     map[string]uint64 `json:"counters"`
	Device       map[string]uint64 `json:"device"` // the TUN device's own counters
}

func (r *ourRelay) status(t testing.TB) relayStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+relayStatusAddr+"/status", nil)
	resp, err := r.Host.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-relay /status: %v", err)
	}
	defer resp.Body.Close()
	var st relayStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("teredo-relay /status: %v", err)
	}
	if st.State != "running" || st.Version == "" || st.Counters == nil || st.Drops == nil {
		t.Fatalf("teredo-relay /status lacks the common fields: %+v", st)
	}
	return st
}

// String lists the non-zero counters, for messages.
func (s relayStatus) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Counters)) {
		if v := s.Counters[k]; v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Drops)) {
		if v := s.Drops[k]; v > 0 {
			parts = append(parts, fmt.Sprintf("drop_%s=%d", k, v))
		}
	}
	return fmt.Sprintf("%s peers=%d %s", s.State, s.Peers, strings.Join(parts, " "))
}

// requireOurRelay skips while the project's relay command does not exist.
func requireOurRelay(t testing.TB) {
	t.Helper()
	requireFile(t, ourRelayDir)
}

// TestMiredoClientViaOurRelay has Miredo clients behind a home router, a symmetric NAT
// and a full-cone NAT download a file from the IPv6-only host through the project's
// relay, found by the echo test.
func TestMiredoClientViaOurRelay(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			requireOurRelay(t)
			Require(t, "curl")
			l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"c", Symmetric}, {"d", FullCone}}})
			srv := impl.start(t, l)
			r := startOurRelay(t, l.Relay)
			f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)
			for _, name := range []string{"a1", "c", "d"} {
				t.Run(name, func(t *testing.T) {
					c := StartMiredoClient(t, l.Clients[name], srv.Primary, MiredoClientOptions{})
					ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
					defer cancel()
					start := time.Now()
					got, err := c.Host.Curl(ctx, f.URL, "--connect-timeout", "20")
					if err != nil {
						t.Fatalf("%v\nrelay: %v", err, r.status(t))
					}
					if err := f.Verify(got); err != nil {
						t.Fatal(err)
					}
					t.Logf("Miredo client %v behind %s: %d bytes in %v", c.Addr, c.Host.NAT.Kind, got.Size, time.Since(start).Round(time.Millisecond))
				})
			}
			st := r.status(t)
			t.Logf("relay: %v", st)
			if st.Counters["rx_forwarded"] == 0 || st.Counters["tx_forwarded"] < 3*(4<<20)/1280 {
				t.Errorf("the downloads did not go through our relay: %v", st)
			}
		})
	}
}

// TestClientViaOurRelay has the project's client, behind a home router, a symmetric
// NAT and a full-cone NAT, download from the IPv6-only host through the project's
// relay, and the IPv6-only host connect to a listener on another of our clients
// through it.
func TestClientViaOurRelay(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			requireOurRelay(t)
			l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}, {"c", Symmetric}, {"d", FullCone}}})
			srv := impl.start(t, l)
			r := startOurRelay(t, l.Relay)
			f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)
			for _, name := range []string{"a1", "c", "d"} {
				t.Run("download-"+name, func(t *testing.T) {
					p := startProbe(t, l.Clients[name], srv, probeOptions{})
					checkDownload(t, p, f)
				})
			}
			t.Run("inbound-a2", func(t *testing.T) {
				p := startProbe(t, l.Clients["a2"], srv, probeOptions{})
				checkInbound(t, l.V6Host, p, 1<<20)
			})
			st := r.status(t)
			t.Logf("relay: %v", st)
			if st.Counters["rx_forwarded"] == 0 || st.Counters["tx_forwarded"] < 3*(4<<20)/1280 {
				t.Errorf("the traffic did not go through our relay: %v", st)
			}
		})
	}
}
