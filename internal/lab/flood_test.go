package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// floodDuration spans one Miredo refresh (every 30 s), so the client refreshes its
// qualification while the server is under fire.
const floodDuration = 33 * time.Second

// statusAddr is where the project's server serves GET /status inside the server host.
const statusAddr = "127.0.0.1:8351"

// attack is one datagram fired at the server.
type attack struct {
	kind    string
	payload []byte
	dst     netip.Addr // server primary or secondary
	// policy marks well-sourced but oversized packets (a long trailer, a big ICMPv6
	// message): Miredo relays some of them and the project's server drops them, so
	// they go out from a second port and count in neither check.
	policy bool
}

// attacks builds a bounded, seeded set of malformed, truncated, spoofed and oversized
// datagrams from an attacker whose real mapping is self, against victim's Teredo
// address.
func attacks(rng *rand.Rand, srv *TeredoServer, self netip.AddrPort, victim netip.Addr) []attack {
	var out []attack
	add := func(kind string, p []byte) {
		dst := srv.Primary
		if rng.IntN(4) == 0 {
			dst = srv.Secondary
		}
		out = append(out, attack{kind: kind, payload: p, dst: dst})
	}
	// Garbage: random bytes, some dressed with a Teredo indication header.
	for range 800 {
		p := make([]byte, 1+rng.IntN(300))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		switch rng.IntN(4) {
		case 0:
			p = append([]byte{0, 1, byte(rng.Uint32()), byte(rng.Uint32())}, p...) // auth header, bogus lengths
		case 1:
			p = append([]byte{0, 0}, p...) // origin indication prefix
		case 2:
			p[0] = 0x60 // IPv6 version nibble
		}
		add("garbage", p)
	}
	// Truncated: every proper prefix of a valid RS and of a valid bubble.
	rs := proto.AppendRS(nil, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, false)
	selfTeredo := proto.Address{Server: srv.Primary, Mapped: self}.Addr()
	bubble := proto.AppendBubble(nil, selfTeredo, victim, 0)
	for range 2 {
		for n := range len(rs) {
			add("truncated", rs[:n])
		}
		for n := 1; n < len(bubble); n++ {
			add("truncated", bubble[:n])
		}
	}
	// Spoofed: bubbles and echo requests to the victim whose Teredo source does not
	// carry the attacker's real mapping, with or without a forged origin indication.
	for i := range 150 {
		fake := proto.Address{
			Server: srv.Primary,
			Mapped: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i%50)}), uint16(1024+rng.IntN(60000))),
		}.Addr()
		var p []byte
		if i%3 == 0 {
			p = proto.AppendOrigin(p, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, 99}), 4242))
		}
		if i%2 == 0 {
			p = proto.AppendBubble(p, fake, victim, 0)
		} else {
			p = proto.AppendEcho(p, fake, victim, 64, 128, 1, uint16(i), []byte("spoof"))
		}
		add("spoofed", p)
	}
	// Oversized: maximal UDP payloads, a bubble with a long trailer and an ICMPv6
	// message from the attacker's own address that is too big to relay.
	for i := range 12 {
		size := []int{1473, 9000, 65507}[i%3]
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		add("oversized", p)
		policySelf := proto.Address{Server: srv.Primary, Mapped: netip.AddrPortFrom(self.Addr(), self.Port()+1)}.Addr()
		out = append(out,
			attack{kind: "oversized-policy", dst: srv.Primary, policy: true,
				payload: append(proto.AppendBubble(nil, policySelf, victim, 0), make([]byte, 2000)...)},
			attack{kind: "oversized-policy", dst: srv.Primary, policy: true,
				payload: proto.AppendEcho(nil, policySelf, victim, 64, 128, 2, uint16(i), make([]byte, 1000))})
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// statusFlag reports whether the project's server offers a -status flag.
func statusFlag(t *testing.T, h *Host, bin string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := h.Run(ctx, bin, "-h") // -h exits non-zero with the flag package
	return regexp.MustCompile(`(?m)^\s*-status\b`).MatchString(out)
}

// serverDrops returns the server's drop counters, or ok=false for a server that
// exposes none (miredo-server).
func serverDrops(t *testing.T, l *Lab, srv *TeredoServer, haveStatus bool) (total uint64, detail string, ok bool) {
	t.Helper()
	if srv.Impl != "teredo-server" {
		return 0, "", false
	}
	if haveStatus {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+statusAddr+"/status", nil)
		resp, err := l.Server.HTTPClient().Do(req)
		if err != nil {
			t.Fatalf("GET /status: %v", err)
		}
		defer resp.Body.Close()
		// The fields of server.Status that matter here: the skeleton every
		// role's /status shares.
		var st struct {
			State    string            `json:"state"`
			Version  string            `json:"version"`
			Counters map[string]uint64 `json:"counters"`
			Drops    map[string]uint64 `json:"drops"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatalf("GET /status: %v", err)
		}
		if st.State != "running" || st.Version == "" {
			t.Errorf("GET /status: state %q, version %q", st.State, st.Version)
		}
		var parts []string
		var sum uint64
		for _, r := range slices.Sorted(maps.Keys(st.Drops)) {
			sum += st.Drops[r]
			if n := st.Drops[r]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s=%d", r, n))
			}
		}
		// Each received datagram is dropped at most once.
		if rx := st.Counters["rx_received"]; sum > rx {
			t.Errorf("GET /status: %d drops but only %d datagrams received", sum, rx)
		}
		return sum, fmt.Sprintf("received=%d router_advertisements=%d forwarded=%d dropped=%d (%s)",
			st.Counters["rx_received"], st.Counters["tx_router_advertisements"], st.Counters["tx_forwarded_teredo"], sum, strings.Join(parts, " ")), true
	}
	// Without a status endpoint, -v logs every drop at debug level.
	var n uint64
	for line := range strings.Lines(srv.Proc.Output()) {
		if strings.Contains(strings.ToLower(line), "drop") {
			n++
		}
	}
	return n, fmt.Sprintf("%d drop lines in the -v log", n), true
}

// TestServerUnderFire fires garbage, truncated, spoofed and oversized datagrams at the
// server from a client namespace while a Miredo client refreshes: the server keeps
// running and counting drops, relays none of the spoofed packets, the client stays
// qualified, and a fresh client can still reach it.
func TestServerUnderFire(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			t.Parallel() // mostly waiting: both servers' runs share the wall time
			l := New(t, Options{
				Clients:  []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}, {"x", OpenMasquerade}},
				NoRelay:  true,
				NoV6Host: true,
			})
			var srv *TeredoServer
			haveStatus := false
			if impl.name == "teredo-server" {
				bin := BuildCommand(t, "./cmd/teredo-server")
				if haveStatus = statusFlag(t, l.Server, bin); haveStatus {
					srv = StartTeredoServer(t, l.Server, bin, "-v", "-status", statusAddr)
				} else {
					srv = StartTeredoServer(t, l.Server, bin, "-v")
				}
			} else {
				srv = impl.start(t, l)
			}
			victim := StartMiredoClient(t, l.Clients["a1"], srv.Primary, MiredoClientOptions{})
			a1NAT := victim.Host.NAT
			ctx, cancel := context.WithTimeout(context.Background(), 2*floodDuration)
			defer cancel()
			udpStats := func() UDPStats {
				st, err := victim.Host.UDPStats(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
			before := udpStats()

			// The attacker's port is preserved by its masquerading NAT, so it knows its
			// own mapping without qualifying.
			x := l.Clients["x"]
			self := netip.AddrPortFrom(x.NAT.WAN, 40000)
			// Count what the victim's NAT forwards to the attacker: a spoofed packet
			// relayed by the server would make the victim bubble the attacker.
			for name, port := range map[string]uint16{"answers": self.Port(), "policy": self.Port() + 1} {
				if err := a1NAT.AddForwardCounter(ctx, name, fmt.Sprintf("ip daddr %v udp dport %d", self.Addr(), port)); err != nil {
					t.Fatal(err)
				}
			}
			conn, err := x.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(x.IPv4[0], self.Port())))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn2, err := x.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(x.IPv4[0], self.Port()+1)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn2.Close()
			shots := attacks(rand.New(rand.NewPCG(1, 2)), srv, self, victim.Addr)
			start := time.Now()
			gap := floodDuration / time.Duration(len(shots))
			counts := map[string]int{}
			mustDrop := 0
			for i, a := range shots {
				c := conn
				if a.policy {
					c = conn2
				} else {
					mustDrop++
				}
				if _, err := c.WriteToUDPAddrPort(a.payload, netip.AddrPortFrom(a.dst, proto.Port)); err != nil {
					t.Fatalf("send %s #%d (%d bytes): %v", a.kind, i, len(a.payload), err)
				}
				counts[a.kind]++
				if wait := time.Until(start.Add(time.Duration(i+1) * gap)); wait > 0 {
					time.Sleep(wait)
				}
				if !srv.Proc.Running() {
					t.Fatalf("%s died after %d datagrams:\n%s", srv.Impl, i+1, tail(srv.Proc.Output()))
				}
			}
			t.Logf("fired %d datagrams in %v: %v", len(shots), time.Since(start).Round(time.Millisecond), counts)

			if !srv.Proc.Running() {
				t.Fatalf("%s died under fire:\n%s", srv.Impl, tail(srv.Proc.Output()))
			}
			if err := l.Server.WaitUDPListening(srv.Proc, 5*time.Second, netip.AddrPortFrom(srv.Primary, proto.Port), netip.AddrPortFrom(srv.Secondary, proto.Port)); err != nil {
				t.Fatal(err)
			}
			after := udpStats()
			if after.OutDatagrams <= before.OutDatagrams || after.InDatagrams <= before.InDatagrams {
				t.Fatalf("no refresh during the flood: the victim's UDP counters went from %+v to %+v", before, after)
			}
			t.Logf("during the flood the victim sent %d datagrams and received %d", after.OutDatagrams-before.OutDatagrams, after.InDatagrams-before.InDatagrams)
			if a, ok, err := victim.Host.TeredoAddr(ctx, victim.Interface); err != nil || !ok || a != victim.Addr {
				t.Fatalf("victim lost its qualification: address %v (ok=%v, err=%v), was %v\n%s", a, ok, err, victim.Addr, tail(victim.Proc.Output()))
			}
			if out := victim.Proc.Output(); strings.Contains(out, "Lost Teredo connectivity") || strings.Count(out, "New Teredo address") > 1 {
				t.Fatalf("victim's tunnel flapped during the flood:\n%s", tail(out))
			}

			// None of the spoofed packets made the victim answer the attacker.
			answers, err := a1NAT.ForwardCounter(ctx, "answers")
			if err != nil {
				t.Fatal(err)
			}
			if answers != 0 {
				t.Fatalf("the server relayed spoofed or malformed packets: the victim sent %d packets to the attacker", answers)
			}
			if n, err := a1NAT.ForwardCounter(ctx, "policy"); err == nil && n > 0 {
				t.Logf("%s relayed well-sourced oversized packets: the victim answered %d of them", srv.Impl, n)
			}

			if total, detail, ok := serverDrops(t, l, srv, haveStatus); ok {
				t.Logf("%s counters: %s", srv.Impl, detail)
				if min := uint64(mustDrop) * 9 / 10; total < min {
					t.Errorf("%s counted %d drops for %d malformed or spoofed datagrams (want at least %d)", srv.Impl, total, mustDrop, min)
				}
			} else {
				t.Logf("%s exposes no drop counters; checked only that it survived", srv.Impl)
			}

			// Control: a well-formed bubble from the attacker's true Teredo address is
			// relayed, and the victim answers it directly — so the check above could fail.
			selfTeredo := proto.Address{Server: srv.Primary, Mapped: self}.Addr()
			if _, err := conn.WriteToUDPAddrPort(proto.AppendBubble(nil, selfTeredo, victim.Addr, 0), netip.AddrPortFrom(srv.Primary, proto.Port)); err != nil {
				t.Fatal(err)
			}
			if !waitCounter(ctx, a1NAT, "answers", 5*time.Second) {
				t.Fatalf("control: the victim never answered a valid indirect bubble relayed by %s", srv.Impl)
			}

			// The server still serves: a fresh client qualifies and reaches the victim.
			fresh := StartMiredoClient(t, l.Clients["a2"], srv.Primary, MiredoClientOptions{})
			pingTeredo(t, fresh, victim)
		})
	}
}

// waitCounter polls a NAT counter until it is non-zero, for at most timeout.
func waitCounter(ctx context.Context, n *NAT, name string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if v, err := n.ForwardCounter(ctx, name); err == nil && v > 0 {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}
