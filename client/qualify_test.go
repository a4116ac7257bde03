package client

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

func TestQualificationRetries(t *testing.T) {
	h := newHarness(t, nil)
	if st := h.c.Status().State; st != StateIdle {
		t.Fatalf("state %v before Start", st)
	}
	h.c.Start()
	var nonces [][8]byte
	// RS at 0, 4 and 8 s, restricted (cone bit clear), to the server.
	for i := range 3 {
		r := h.takeRS()
		if len(r) != 1 || r[0].cone || r[0].src != proto.RSSourceRestricted || r[0].to != ap(server1) {
			t.Fatalf("try %d: %+v", i, r)
		}
		nonces = append(nonces, r[0].nonce)
		if h.c.Status().State != StateQualifying {
			t.Fatalf("state %v", h.c.Status().State)
		}
		h.advance(QualificationDelay - time.Millisecond)
		if len(h.net.take()) != 0 {
			t.Fatal("RS before 4 s")
		}
		h.advance(time.Millisecond)
	}
	if nonces[0] == [8]byte{} {
		t.Fatal("zero nonce")
	}
	// After the third timeout: offline, then a new round after the backoff.
	if st := h.c.Status().State; st != StateOffline {
		t.Fatalf("state %v after 3 tries", st)
	}
	ev := h.takeEvents()
	if len(ev) != 1 || !errors.Is(ev[0].(Offline).Reason, ErrNoReply) {
		t.Fatalf("events %v", ev)
	}
	if len(h.net.take()) != 0 {
		t.Fatal("RS sent while offline")
	}
	h.advance(MinRetryDelay)
	r := h.takeRS()
	if len(r) != 1 || r[0].nonce == nonces[0] {
		t.Fatalf("new round %+v (nonce must be fresh)", r)
	}
	// A late RA for the old round's nonce is refused.
	h.c.Receive(ra(rs{nonce: nonces[0], src: proto.RSSourceRestricted}, server1, mappedUs, 0), ap(server1))
	if _, ok := h.c.Addr(); ok {
		t.Fatal("qualified with a stale nonce")
	}
	if h.drops("ra-nonce") != 1 {
		t.Fatalf("drops %v", h.c.Status().Counters.Drops)
	}
	// The first valid RA qualifies.
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	a, ok := h.c.Addr()
	if !ok {
		t.Fatal("not qualified")
	}
	ev = h.takeEvents()
	if len(ev) != 1 || ev[0].(Qualified).Addr != a || ev[0].(Qualified).MTU != 1280 {
		t.Fatalf("events %v", ev)
	}
	// Backoff doubles while every server keeps failing, up to 100 s.
	h2 := newHarness(t, nil)
	h2.c.Start()
	var gaps []time.Duration
	last := t0
	for range 8 * QualificationTries {
		for len(h2.net.take()) == 0 {
			h2.advance(time.Second)
		}
		now := h2.clk.Now()
		if d := now.Sub(last); d > QualificationDelay {
			gaps = append(gaps, d-QualificationDelay)
		}
		last = now
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 100 * time.Second, 100 * time.Second}
	if len(gaps) != len(want) {
		t.Fatalf("backoff gaps %v", gaps)
	}
	for i := range want {
		if gaps[i] != want[i] {
			t.Fatalf("backoff gaps %v, want %v", gaps, want)
		}
	}
}

func TestRAValidation(t *testing.T) {
	other := netip.MustParseAddr("198.18.0.99")
	tests := []struct {
		name   string
		build  func(r rs) []byte
		from   netip.AddrPort
		reason string
	}{
		{"nonce mismatch", func(r rs) []byte { r.nonce[0] ^= 1; return ra(r, server1, mappedUs, 0) }, ap(server1), "ra-nonce"},
		{"wrong source port", func(r rs) []byte { return ra(r, server1, mappedUs, 0) }, netip.AddrPortFrom(server1, 3545), "not-qualified"},
		{"wrong source address", func(r rs) []byte { return ra(r, server1, mappedUs, 0) }, ap(other), "ra-invalid"},
		{"prefix of another server", func(r rs) []byte { return ra(r, other, mappedUs, 0) }, ap(server1), "ra-invalid"},
		{"wrong destination", func(r rs) []byte { r.src = proto.RSSourceCone; return ra(r, server1, mappedUs, 0) }, ap(server1), "ra-invalid"},
		{"non-global mapping", func(r rs) []byte { return ra(r, server1, netip.MustParseAddrPort("10.0.0.1:1000"), 0) }, ap(server1), "ra-invalid"},
		{"confirmation set", func(r rs) []byte {
			b := ra(r, server1, mappedUs, 0)
			b[12] = 1
			return b
		}, ap(server1), "ra-invalid"},
		{"no origin", func(r rs) []byte {
			b := ra(r, server1, mappedUs, 0)
			return append(b[:13:13], b[21:]...)
		}, ap(server1), "ra-invalid"},
		{"bad checksum", func(r rs) []byte {
			b := ra(r, server1, mappedUs, 0)
			b[len(b)-1] ^= 0xff
			return b
		}, ap(server1), "ra-invalid"},
		{"two prefixes", func(r rs) []byte { return twoPrefixRA(r) }, ap(server1), "ra-invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.c.Start()
			r := h.takeRS()[0]
			if h.c.Receive(tt.build(r), tt.from) != nil {
				t.Fatal("RA delivered")
			}
			if _, ok := h.c.Addr(); ok {
				t.Fatal("qualified by an invalid RA")
			}
			if n := h.drops(tt.reason); n != 1 {
				t.Fatalf("drops %v, want 1 %q", h.c.Status().Counters.Drops, tt.reason)
			}
			// The valid one still works, within the same try.
			h.c.Receive(ra(r, server1, mappedUs, 1400), ap(server1))
			if _, ok := h.c.Addr(); !ok || h.c.MTU() != 1400 {
				t.Fatalf("not qualified by the valid RA: %+v", h.c.Status())
			}
		})
	}
}

// twoPrefixRA builds an RA with two prefix information options.
func twoPrefixRA(r rs) []byte {
	b := proto.AppendAuth(nil, &proto.Auth{Nonce: r.nonce})
	b = proto.AppendOrigin(b, mappedUs)
	body := make([]byte, 12)
	for _, s := range []netip.Addr{server1, server1} {
		pio := make([]byte, 32)
		pio[0], pio[1], pio[2], pio[3] = 3, 4, 64, 0x40
		p := proto.ServerPrefix(s).Addr().As16()
		copy(pio[16:], p[:])
		body = append(body, pio...)
	}
	return proto.AppendICMPv6(b, proto.ServerLinkLocal(server1), r.src, 255, proto.ICMPRouterAdvert, 0, body)
}

func TestAddressFlags(t *testing.T) {
	for seed := range byte(20) {
		h := newHarness(t, func(c *Config) { c.Rand = rand.NewChaCha8([32]byte{seed}) })
		a := h.qualify()
		ta, ok := proto.ParseAddress(a)
		if !ok || ta.Server != server1 || ta.Mapped != mappedUs {
			t.Fatalf("address %v decodes to %+v", a, ta)
		}
		if ta.Cone() || ta.Flags&^proto.RandomFlagsMask != 0 {
			t.Fatalf("flags %#04x outside 0x3cff", ta.Flags)
		}
	}
}

func TestRefreshInterval(t *testing.T) {
	seen := map[time.Duration]bool{}
	for seed := range byte(30) {
		h := newHarness(t, func(c *Config) { c.Rand = rand.NewChaCha8([32]byte{seed, 9}) })
		h.qualify()
		start := h.clk.Now()
		for len(h.net.take()) == 0 {
			h.advance(100 * time.Millisecond)
		}
		d := h.clk.Now().Sub(start)
		if d < RefreshInterval*3/4 || d > RefreshInterval {
			t.Fatalf("refresh after %v, want 22.5-30 s", d)
		}
		seen[d.Round(time.Second)] = true
	}
	if len(seen) < 3 {
		t.Fatalf("refresh interval not randomized: %v", seen)
	}
}

// refresh advances to the next refresh RS and returns it.
func (h *harness) refresh() rs {
	h.t.Helper()
	for range 400 {
		h.advance(100 * time.Millisecond)
		var r []rs
		for _, d := range h.net.take() {
			if x, ok := parseRS(d); ok {
				r = append(r, x)
			}
		}
		if len(r) > 0 {
			if len(r) != 1 || r[0].to != ap(server1) || r[0].cone {
				h.t.Fatalf("refresh RS %+v", r)
			}
			return r[0]
		}
	}
	h.t.Fatal("no refresh RS")
	return rs{}
}

func TestMaintenance(t *testing.T) {
	t.Run("same mapping keeps address", func(t *testing.T) {
		h := newHarness(t, nil)
		a := h.qualify()
		for range 3 {
			r := h.refresh()
			h.c.Receive(ra(r, server1, mappedUs, 0), ap(server1))
		}
		if b, _ := h.c.Addr(); b != a || len(h.takeEvents()) != 0 {
			t.Fatalf("address %v -> %v, events %v", a, b, h.events)
		}
	})
	t.Run("changed mapping", func(t *testing.T) {
		h := newHarness(t, nil)
		a := h.qualify()
		h.c.Transmit([][]byte{ipPacket(a, peerAddr, "x")})
		if h.c.Status().Peers != 1 {
			t.Fatal("no peer entry")
		}
		h.net.take()
		r := h.refresh()
		h.c.Receive(ra(r, server1, mappedUs2, 0), ap(server1))
		b, _ := h.c.Addr()
		ev := h.takeEvents()
		if len(ev) != 1 || ev[0] != (AddressChanged{Old: a, New: b}) {
			t.Fatalf("events %v", ev)
		}
		ta, tb := mustParse(t, a), mustParse(t, b)
		if tb.Mapped != mappedUs2 || ta.Flags == tb.Flags {
			t.Fatalf("new address %+v from %+v: random bits must be drawn again", tb, ta)
		}
		if h.c.Status().Peers != 0 {
			t.Fatal("peer list not flushed")
		}
		// NAT classification runs again for the new mapping.
		if p := h.takeRS(); len(p) != 1 || p[0].to != ap(server1b) {
			t.Fatalf("no NAT probe after the change: %+v", p)
		}
	})
	t.Run("offline after 3 missed refreshes, same bits back", func(t *testing.T) {
		h := newHarness(t, nil)
		a := h.qualify()
		h.refresh()
		h.advance(QualificationDelay)
		if r := h.takeRS(); len(r) != 1 {
			t.Fatal("no second refresh try")
		}
		h.advance(QualificationDelay)
		if r := h.takeRS(); len(r) != 1 {
			t.Fatal("no third refresh try")
		}
		if _, ok := h.c.Addr(); !ok {
			t.Fatal("offline too early")
		}
		h.advance(QualificationDelay)
		if _, ok := h.c.Addr(); ok {
			t.Fatal("still qualified after 3 missed refreshes")
		}
		ev := h.takeEvents()
		if len(ev) != 1 {
			t.Fatalf("events %v", ev)
		}
		if _, ok := ev[0].(Offline); !ok {
			t.Fatalf("event %v", ev[0])
		}
		// Not qualified: packets get an ICMPv6 no-route error.
		if _, ok := h.c.Transmit([][]byte{ipPacket(a, peerAddr, "x")}); ok {
			t.Fatal("transmit while offline")
		}
		d := h.takeDelivered()
		if len(d) != 1 {
			t.Fatalf("delivered %d", len(d))
		}
		if typ, code, _ := icmpErr(t, d[0]); typ != proto.ICMPDestUnreachable || code != proto.UnreachNoRoute {
			t.Fatalf("icmp %d/%d", typ, code)
		}
		// Requalification with the same mapping gives the same address.
		h.advance(MinRetryDelay)
		r := h.takeRS()
		h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
		if b, _ := h.c.Addr(); b != a {
			t.Fatalf("address %v after requalification, want %v", b, a)
		}
		if ev := h.takeEvents(); len(ev) != 1 || ev[0].(Qualified).Addr != a {
			t.Fatalf("events %v", ev)
		}
	})
}

func mustParse(t *testing.T, a netip.Addr) proto.Address {
	t.Helper()
	x, ok := proto.ParseAddress(a)
	if !ok {
		t.Fatalf("%v is not Teredo", a)
	}
	return x
}

func TestServerFailover(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Servers = []netip.Addr{server1, server2} })
	h.c.Start()
	for range 3 {
		if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server1) {
			t.Fatalf("%+v", r)
		}
		h.advance(QualificationDelay)
	}
	r := h.takeRS()
	if len(r) != 1 || r[0].to != ap(server2) {
		t.Fatalf("no immediate failover: %+v", r)
	}
	if st := h.c.Status(); st.Server != server2 || st.State != StateQualifying {
		t.Fatalf("status %+v", st)
	}
	// An RA from the old server does not count.
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	if _, ok := h.c.Addr(); ok {
		t.Fatal("qualified through the wrong server")
	}
	h.c.Receive(ra(r[0], server2, mappedUs, 0), ap(server2))
	a, ok := h.c.Addr()
	if !ok || mustParse(t, a).Server != server2 {
		t.Fatalf("addr %v %v", a, ok)
	}
	ev := h.takeEvents()
	if len(ev) != 2 {
		t.Fatalf("events %v", ev)
	}
	if _, ok := ev[0].(Offline); !ok {
		t.Fatalf("first event %v", ev[0])
	}
	if _, ok := ev[1].(Qualified); !ok {
		t.Fatalf("second event %v", ev[1])
	}
	// The secondary of a non-first server is its address + 1.
	if p := h.takeRS(); len(p) != 1 || p[0].to != ap(server2.Next()) {
		t.Fatalf("NAT probe %+v", p)
	}
}

func TestNATClassification(t *testing.T) {
	tests := []struct {
		name      string
		cone      bool
		secondary netip.AddrPort // mapping the secondary reports; invalid: no answer
		coneRA    bool           // the cone RA gets through the NAT
		want      NATType
	}{
		{"restricted", false, mappedUs, false, NATRestricted},
		{"symmetric", false, mappedUs2, false, NATSymmetric},
		{"no secondary", false, netip.AddrPort{}, false, NATUnknown},
		{"cone with probing", true, mappedUs, true, NATCone},
		{"restricted with probing", true, mappedUs, false, NATRestricted},
		{"symmetric with probing", true, mappedUs2, false, NATSymmetric},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.ConeProbe = tt.cone })
			h.c.Start()
			r := h.takeRS()
			h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
			if st := h.c.Status(); st.State != StateQualified || st.NAT != NATUnknown {
				t.Fatalf("status %+v", st)
			}
			h.takeEvents()
			p := h.takeRS()
			if len(p) != 1 || p[0].to != ap(server1b) || p[0].cone {
				t.Fatalf("secondary probe %+v", p)
			}
			if tt.secondary.IsValid() {
				h.c.Receive(ra(p[0], server1, tt.secondary, 0), ap(server1b))
			} else {
				for range 3 {
					h.advance(QualificationDelay)
				}
			}
			if tt.cone && tt.want != NATSymmetric && tt.secondary.IsValid() {
				c := h.takeRS()
				if len(c) != 1 || !c[0].cone || c[0].src != proto.RSSourceCone || c[0].to != ap(server1) {
					t.Fatalf("cone probe %+v", c)
				}
				// While the cone probe runs, no interim answer is reported.
				if st := h.c.Status(); st.NAT != NATUnknown {
					t.Fatalf("NAT %v during the cone probe, want unknown", st.NAT)
				}
				if tt.coneRA {
					// The server answers from its other address.
					h.c.Receive(ra(c[0], server1, mappedUs, 0), ap(server1b))
				} else {
					for range 3 {
						h.advance(QualificationDelay)
					}
				}
			}
			if st := h.c.Status(); st.NAT != tt.want || st.State != StateQualified {
				t.Fatalf("status %+v, want NAT %v", st, tt.want)
			}
			ev := h.takeEvents()
			if len(ev) != 1 || ev[0] != (NATClassified{Type: tt.want}) {
				t.Fatalf("events %v", ev)
			}
			// The address never depends on the classification.
			if _, ok := h.c.Addr(); !ok {
				t.Fatal("service refused")
			}
		})
	}
}
