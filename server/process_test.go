package server

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
)

// The test world: a server on two global addresses, two of its clients, a
// client of another server, a relay and a native host.
var (
	tPrimary   = netip.MustParseAddr("198.18.0.1")
	tSecondary = netip.MustParseAddr("198.18.0.2")
	tOther     = netip.MustParseAddr("192.0.2.1") // another Teredo server

	mapA     = netip.MustParseAddrPort("203.0.113.5:40000")
	mapB     = netip.MustParseAddrPort("198.51.100.7:50000")
	mapC     = netip.MustParseAddrPort("203.0.113.99:1234")
	relayUDP = netip.MustParseAddrPort("192.0.2.50:3544")

	teredoA = proto.Address{Server: tPrimary, Flags: 0x28cd, Mapped: mapA}.Addr()
	teredoB = proto.Address{Server: tPrimary, Mapped: mapB}.Addr()
	teredoC = proto.Address{Server: tOther, Mapped: mapC}.Addr()
	native  = netip.MustParseAddr("2001:db8::1")
	nonce   = [8]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
	start   = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
)

type sent struct {
	sock Socket
	b    []byte
	dst  netip.AddrPort
}

// fakeSender records what the processor sends.
type fakeSender struct {
	sent []sent
	err  error
}

func (f *fakeSender) SendFrom(sock Socket, b []byte, dst netip.AddrPort) error {
	if f.err != nil {
		return f.err
	}
	f.sent = append(f.sent, sent{sock, bytes.Clone(b), dst})
	return nil
}

// fakeOutput records what the processor hands to the IPv6 output.
type fakeOutput struct {
	pkts [][]byte
	err  error
}

func (f *fakeOutput) WriteIPv6(pkt []byte) error {
	if f.err != nil {
		return f.err
	}
	f.pkts = append(f.pkts, bytes.Clone(pkt))
	return nil
}

func newTestProcessor(t testing.TB, mod func(*Config)) (*Processor, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(start)
	cfg := Config{Primary: tPrimary, Clock: clk}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewProcessor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, clk
}

func bubble(src, dst netip.Addr) []byte { return proto.AppendBubble(nil, src, dst, 0) }

func echo(src, dst netip.Addr, typ uint8, n int) []byte {
	return proto.AppendEcho(nil, src, dst, 64, typ, 1, 2, make([]byte, n))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProcessRules(t *testing.T) {
	own := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, proto.Port) }
	badVersion := bubble(teredoA, teredoB)
	badVersion[0] = 0x40
	badLength := bubble(teredoA, teredoB)
	badLength[5] = 8
	shortICMP := cat(bubble(teredoA, teredoB)[:40], []byte{0x80, 0})
	shortICMP[5], shortICMP[6] = 2, proto.ProtoICMPv6
	udp := cat(bubble(teredoA, teredoB), make([]byte, 8))
	udp[5], udp[6] = 8, proto.ProtoUDP
	fakeBubble := cat(bubble(teredoA, teredoB), make([]byte, 8)) // next header 59 with a payload
	fakeBubble[5] = 8
	rsFromGlobal := proto.AppendICMPv6(nil, native, proto.AllRouters, 255, proto.ICMPRouterSolicit, 0, make([]byte, 4))
	toAllRouters := proto.AppendICMPv6(nil, teredoA, proto.AllRouters, 255, proto.ICMPEchoRequest, 0, make([]byte, 4))
	toServerLL := echo(teredoA, proto.ServerLinkLocal(tPrimary), proto.ICMPEchoRequest, 8)
	mappedPrivate := proto.Address{Server: tPrimary, Mapped: netip.MustParseAddrPort("10.1.2.3:1000")}.Addr()
	mappedPort0 := proto.Address{Server: tPrimary, Mapped: netip.MustParseAddrPort("203.0.113.1:0")}.Addr()
	trailer64 := bytes.Repeat([]byte{0}, MaxTrailer)
	auth := proto.AppendAuth(nil, &proto.Auth{Nonce: nonce})
	errSend := errors.New("send failed")

	type want struct {
		res    Result
		from   Socket
		dst    netip.AddrPort
		origin netip.AddrPort // zero: no origin indication expected
		body   []byte         // what follows the origin indication
	}
	fwd := func(dst, origin netip.AddrPort, body []byte) want {
		return want{res: Result{Action: ForwardedTeredo}, from: Primary, dst: dst, origin: origin, body: body}
	}
	dropped := func(r DropReason) want { return want{res: Result{Action: Dropped, Reason: r}} }
	tests := []struct {
		name    string
		sock    Socket
		src     netip.AddrPort
		payload []byte
		out     *fakeOutput // nil: no IPv6 output
		sendErr error
		want    want
	}{
		// Miredo's loop guard comes first.
		{"loop from primary", Primary, own(tPrimary), bubble(teredoA, teredoB), nil, nil, dropped(DropLoop)},
		{"loop from secondary", Secondary, own(tSecondary), bubble(teredoA, teredoB), nil, nil, dropped(DropLoop)},

		// Check 1: malformed.
		{"empty", Primary, mapA, nil, nil, nil, dropped(DropMalformed)},
		{"short", Primary, mapA, bubble(teredoA, teredoB)[:39], nil, nil, dropped(DropMalformed)},
		{"not IPv6", Primary, mapA, badVersion, nil, nil, dropped(DropMalformed)},
		{"payload length beyond datagram", Primary, mapA, badLength, nil, nil, dropped(DropMalformed)},
		{"unknown indication", Primary, mapA, cat([]byte{0, 2, 0, 0}, bubble(teredoA, teredoB)), nil, nil, dropped(DropMalformed)},
		{"truncated auth", Primary, mapA, auth[:10], nil, nil, dropped(DropMalformed)},
		{"ICMPv6 shorter than its header", Primary, mapA, shortICMP, nil, nil, dropped(DropMalformed)},

		// Check 2: only bubbles and ICMPv6.
		{"UDP", Primary, mapA, udp, nil, nil, dropped(DropNotBubbleOrICMPv6)},
		{"no-next-header with payload", Primary, mapA, fakeBubble, nil, nil, dropped(DropNotBubbleOrICMPv6)},

		// Check 3: global IPv4 source.
		{"private source", Primary, netip.MustParseAddrPort("192.168.1.2:40000"), proto.AppendRS(nil, nonce, false), nil, nil, dropped(DropSourceNotGlobal)},
		{"loopback source", Primary, netip.MustParseAddrPort("127.0.0.1:40000"), bubble(teredoA, teredoB), nil, nil, dropped(DropSourceNotGlobal)},
		{"6to4 anycast source", Primary, netip.MustParseAddrPort("192.88.99.1:40000"), bubble(teredoA, teredoB), nil, nil, dropped(DropSourceNotGlobal)},

		// Check 4: router solicitations (RA contents: TestRAVector).
		{"RS on primary", Primary, mapA, proto.AppendRS(nil, nonce, false), nil, nil,
			want{res: Result{Action: AnsweredRS}, from: Primary, dst: mapA}},
		{"RS on secondary", Secondary, mapA, proto.AppendRS(nil, nonce, false), nil, nil,
			want{res: Result{Action: AnsweredRS}, from: Secondary, dst: mapA}},
		{"cone RS on primary answered from secondary", Primary, mapA, proto.AppendRS(nil, nonce, true), nil, nil,
			want{res: Result{Action: AnsweredRS}, from: Secondary, dst: mapA}},
		{"cone RS on secondary answered from primary", Secondary, mapA, proto.AppendRS(nil, nonce, true), nil, nil,
			want{res: Result{Action: AnsweredRS}, from: Primary, dst: mapA}},
		{"RS send error", Primary, mapA, proto.AppendRS(nil, nonce, false), nil, errSend, dropped(DropSendError)},
		{"RS from a global source is not check 4", Primary, relayUDP, rsFromGlobal, nil, nil, dropped(DropNotAllowed)},

		// Check 5: Teredo source at its own mapping.
		{"bubble to our client gets origin", Primary, mapA, bubble(teredoA, teredoB), nil, nil,
			fwd(mapB, mapA, bubble(teredoA, teredoB))},
		{"bubble received on secondary leaves from primary", Secondary, mapA, bubble(teredoA, teredoB), nil, nil,
			fwd(mapB, mapA, bubble(teredoA, teredoB))},
		{"bubble to another server's client has no origin", Primary, mapA, bubble(teredoA, teredoC), nil, nil,
			fwd(mapC, netip.AddrPort{}, bubble(teredoA, teredoC))},
		{"sender's indications are not forwarded", Primary, mapA, cat(auth, proto.AppendOrigin(nil, mapC), bubble(teredoA, teredoB)), nil, nil,
			fwd(mapB, mapA, bubble(teredoA, teredoB))},
		{"echo request between clients", Primary, mapA, echo(teredoA, teredoB, proto.ICMPEchoRequest, 80), nil, nil,
			fwd(mapB, mapA, echo(teredoA, teredoB, proto.ICMPEchoRequest, 80))},
		{"RFC 6081 trailer forwarded", Primary, mapA, cat(bubble(teredoA, teredoB), trailer64), nil, nil,
			fwd(mapB, mapA, cat(bubble(teredoA, teredoB), trailer64))},
		{"forward send error", Primary, mapA, bubble(teredoA, teredoB), nil, errSend, dropped(DropSendError)},
		{"Teredo source, wrong port", Primary, netip.AddrPortFrom(mapA.Addr(), 40001), bubble(teredoA, teredoB), nil, nil, dropped(DropNotAllowed)},
		{"Teredo source, wrong address", Primary, netip.AddrPortFrom(mapB.Addr(), mapA.Port()), bubble(teredoA, teredoB), nil, nil, dropped(DropNotAllowed)},

		// Check 6: non-Teredo source to a client of this server.
		{"relay bubble to our client", Primary, relayUDP, bubble(native, teredoB), nil, nil,
			fwd(mapB, relayUDP, bubble(native, teredoB))},
		{"relay echo reply to our client", Primary, relayUDP, echo(native, teredoB, proto.ICMPEchoReply, 22), nil, nil,
			fwd(mapB, relayUDP, echo(native, teredoB, proto.ICMPEchoReply, 22))},
		{"Miredo-style bubble from a link-local nonce source", Primary, mapA, bubble(proto.LinkLocalFromID(nonce), teredoB), nil, nil,
			fwd(mapB, mapA, bubble(proto.LinkLocalFromID(nonce), teredoB))},
		{"link-local source to another server's client", Primary, mapA, bubble(proto.LinkLocalFromID(nonce), teredoC), nil, nil, dropped(DropNotAllowed)},
		{"relay bubble to another server's client", Primary, relayUDP, bubble(native, teredoC), nil, nil, dropped(DropNotAllowed)},
		{"non-Teredo to non-Teredo", Primary, relayUDP, bubble(native, native), nil, nil, dropped(DropNotAllowed)},

		// Destinations that are not global are never forwarded.
		{"to multicast", Primary, mapA, bubble(teredoA, proto.AllNodes), nil, nil, dropped(DropDestNotGlobal)},
		{"to link-local", Primary, mapA, bubble(teredoA, netip.MustParseAddr("fe80::1")), nil, nil, dropped(DropDestNotGlobal)},
		{"to loopback", Primary, mapA, bubble(teredoA, netip.IPv6Loopback()), nil, nil, dropped(DropDestNotGlobal)},
		{"to unspecified", Primary, mapA, bubble(teredoA, netip.IPv6Unspecified()), nil, nil, dropped(DropDestNotGlobal)},
		{"non-RS to ff02::2", Primary, mapA, toAllRouters, nil, nil, dropped(DropDestNotGlobal)},
		{"to the server's link-local", Primary, mapA, toServerLL, nil, nil, dropped(DropDestNotGlobal)},

		// Miredo's 88-byte cap on ICMPv6.
		{"ICMPv6 of 89 bytes", Primary, mapA, echo(teredoA, teredoB, proto.ICMPEchoRequest, 81), nil, nil, dropped(DropICMPv6TooBig)},
		{"large echo to native", Primary, mapA, echo(teredoA, native, proto.ICMPEchoRequest, 1000), &fakeOutput{}, nil, dropped(DropICMPv6TooBig)},

		{"trailer too long", Primary, mapA, cat(bubble(teredoA, teredoB), trailer64, []byte{0}), nil, nil, dropped(DropTrailerTooLong)},
		{"mapped address private", Primary, mapA, bubble(teredoA, mappedPrivate), nil, nil, dropped(DropMappedNotGlobal)},
		{"mapped port 0", Primary, mapA, bubble(teredoA, mappedPort0), nil, nil, dropped(DropMappedNotGlobal)},

		// Native IPv6 destinations: echo requests only, through the output.
		{"echo request to native", Primary, mapA, echo(teredoA, native, proto.ICMPEchoRequest, 22), &fakeOutput{}, nil,
			want{res: Result{Action: ForwardedIPv6}, body: echo(teredoA, native, proto.ICMPEchoRequest, 22)}},
		{"echo request to native, trailer not sent", Primary, mapA, cat(echo(teredoA, native, proto.ICMPEchoRequest, 22), []byte{1, 4, 1, 2, 3, 4}), &fakeOutput{}, nil,
			want{res: Result{Action: ForwardedIPv6}, body: echo(teredoA, native, proto.ICMPEchoRequest, 22)}},
		{"echo request to native without output", Primary, mapA, echo(teredoA, native, proto.ICMPEchoRequest, 22), nil, nil, dropped(DropNoIPv6Output)},
		{"output error", Primary, mapA, echo(teredoA, native, proto.ICMPEchoRequest, 22), &fakeOutput{err: errSend}, nil, dropped(DropIPv6OutputError)},
		{"bubble to native", Primary, mapA, bubble(teredoA, native), &fakeOutput{}, nil, dropped(DropNativeNotEcho)},
		{"echo reply to native", Primary, mapA, echo(teredoA, native, proto.ICMPEchoReply, 22), &fakeOutput{}, nil, dropped(DropNativeNotEcho)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newTestProcessor(t, func(c *Config) {
				if tt.out != nil {
					c.IPv6Output = tt.out
				}
			})
			tx := &fakeSender{err: tt.sendErr}
			got := p.Process(tt.sock, tt.payload, tt.src, tx)
			if got != tt.want.res {
				t.Fatalf("Process = %v/%v, want %v/%v", got.Action, got.Reason, tt.want.res.Action, tt.want.res.Reason)
			}
			st := p.Stats()
			if st.Received != 1 || (got.Action == Dropped) != (st.Dropped == 1) || st.Drops[got.Reason] != uint64(btoi(got.Action == Dropped)) {
				t.Errorf("stats %+v", st)
			}
			switch got.Action {
			case Dropped, ForwardedIPv6:
				if len(tx.sent) != 0 {
					t.Fatalf("sent %d datagrams", len(tx.sent))
				}
			default:
				if len(tx.sent) != 1 {
					t.Fatalf("sent %d datagrams, want 1", len(tx.sent))
				}
				s := tx.sent[0]
				if s.sock != tt.want.from || s.dst != tt.want.dst {
					t.Fatalf("sent from %v to %v, want from %v to %v", s.sock, s.dst, tt.want.from, tt.want.dst)
				}
				if got.Action != ForwardedTeredo {
					break
				}
				body := s.b
				if tt.want.origin.IsValid() {
					body = bytes.TrimPrefix(body, proto.AppendOrigin(nil, tt.want.origin))
				}
				if !bytes.Equal(body, tt.want.body) {
					t.Fatalf("sent\n %x\nwant origin %v and\n %x", s.b, tt.want.origin, tt.want.body)
				}
			}
			if tt.out != nil && got.Action == ForwardedIPv6 {
				if len(tt.out.pkts) != 1 || !bytes.Equal(tt.out.pkts[0], tt.want.body) {
					t.Fatalf("IPv6 output got %x", tt.out.pkts)
				}
			} else if tt.out != nil && len(tt.out.pkts) != 0 {
				t.Fatalf("IPv6 output got %d packets", len(tt.out.pkts))
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestRAVector checks the RS and RA byte for byte against vectors computed
// independently of this code (the RS checksum 0x7d37 is the value Miredo
// hard-codes; the RA has Miredo's layout: origin indication, prefix
// information, MTU 1280, retransmit timer 2000 ms).
func TestRAVector(t *testing.T) {
	server := netip.MustParseAddr("65.54.227.120")
	client := netip.MustParseAddrPort("192.0.2.45:40000")
	p, _ := newTestProcessor(t, func(c *Config) { c.Primary = server })
	rs := unhex(t, "000100000123456789abcdef00 6000000000083aff fe800000000000000000ffffffffffff "+
		"ff020000000000000000000000000002 85007d3700000000")
	if !bytes.Equal(rs, proto.AppendRS(nil, nonce, false)) {
		t.Fatal("RS vector differs from proto.AppendRS")
	}
	want := unhex(t, "000100000123456789abcdef00 000063bf3ffffdd2 "+
		"6000000000383afffe800000000000008000f227bec91c87fe800000000000000000ffffffffffff "+
		"8600954c0000000000000000000007d0 "+
		"03044040ffffffffffffffff00000000200100004136e3780000000000000000 0501000000000500")
	tx := &fakeSender{}
	if r := p.Process(Primary, rs, client, tx); r.Action != AnsweredRS {
		t.Fatalf("Process = %+v", r)
	}
	if len(tx.sent) != 1 || !bytes.Equal(tx.sent[0].b, want) || tx.sent[0].dst != client || tx.sent[0].sock != Primary {
		t.Fatalf("sent %+v\nwant %x", tx.sent, want)
	}
	var pkt proto.Packet
	if err := pkt.Parse(tx.sent[0].b); err != nil {
		t.Fatal(err)
	}
	ra, err := proto.ParseRA(&pkt)
	if err != nil || ra.Nonce != nonce || ra.Mapped != client || ra.Server != server || ra.MTU != 1280 || ra.Dst != proto.RSSourceRestricted {
		t.Fatalf("ParseRA = %+v, %v", ra, err)
	}
}

func TestRAAdvertisesMTU(t *testing.T) {
	p, _ := newTestProcessor(t, func(c *Config) { c.MTU = 1500 })
	tx := &fakeSender{}
	p.Process(Secondary, proto.AppendRS(nil, nonce, true), mapA, tx)
	var pkt proto.Packet
	if len(tx.sent) != 1 || pkt.Parse(tx.sent[0].b) != nil {
		t.Fatalf("sent %+v", tx.sent)
	}
	ra, err := proto.ParseRA(&pkt)
	// The prefix is always the primary's, whichever socket answers.
	if err != nil || ra.MTU != 1500 || ra.Server != tPrimary || ra.Dst != proto.RSSourceCone || ra.Mapped != mapA {
		t.Fatalf("ParseRA = %+v, %v", ra, err)
	}
}

func TestRateLimit(t *testing.T) {
	p, clk := newTestProcessor(t, func(c *Config) {
		c.RateLimit = RateLimit{PerSecond: 2, Burst: 3}
	})
	rs := proto.AppendRS(nil, nonce, false)
	tx := &fakeSender{}
	process := func(src netip.AddrPort) Result { return p.Process(Primary, rs, src, tx) }
	for i := range 3 {
		if r := process(mapA); r.Action != AnsweredRS {
			t.Fatalf("RS %d: %+v", i, r)
		}
	}
	if r := process(mapA); r.Reason != DropRateLimited {
		t.Fatalf("4th RS: %+v", r)
	}
	// Forwarded packets draw on the same bucket.
	if r := p.Process(Primary, bubble(teredoA, teredoB), mapA, tx); r.Reason != DropRateLimited {
		t.Fatalf("bubble: %+v", r)
	}
	// Other sources have their own buckets.
	if r := process(mapB); r.Action != AnsweredRS {
		t.Fatalf("other source: %+v", r)
	}
	clk.Advance(499 * time.Millisecond)
	if r := process(mapA); r.Reason != DropRateLimited {
		t.Fatalf("after 499ms: %+v", r)
	}
	clk.Advance(time.Millisecond)
	if r := process(mapA); r.Action != AnsweredRS {
		t.Fatalf("after 500ms: %+v", r)
	}
	if r := process(mapA); r.Reason != DropRateLimited {
		t.Fatalf("second after 500ms: %+v", r)
	}
	// The bucket refills to Burst, not beyond.
	clk.Advance(time.Hour)
	for i := range 3 {
		if r := process(mapA); r.Action != AnsweredRS {
			t.Fatalf("after an hour, RS %d: %+v", i, r)
		}
	}
	if r := process(mapA); r.Reason != DropRateLimited {
		t.Fatalf("after an hour, 4th RS: %+v", r)
	}
	if st := p.Stats(); st.Drops[DropRateLimited] != 5 || st.AnsweredRS != 8 || st.RateSources != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRateLimitTableBounded(t *testing.T) {
	p, clk := newTestProcessor(t, func(c *Config) {
		c.RateLimit = RateLimit{PerSecond: 1, Burst: 2, MaxSources: 2}
	})
	rs := proto.AppendRS(nil, nonce, false)
	tx := &fakeSender{}
	src := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 40000)
	}
	answered := func(i int) bool { return p.Process(Primary, rs, src(i), tx).Action == AnsweredRS }
	if !answered(1) || !answered(2) {
		t.Fatal("first sources not answered")
	}
	// The table is full: new sources share one overflow bucket of 2.
	if !answered(3) || !answered(4) || answered(5) || answered(3) {
		t.Fatal("overflow bucket not shared")
	}
	if st := p.Stats(); st.RateSources != 2 {
		t.Fatalf("table holds %d sources", st.RateSources)
	}
	// Sources 1 and 2 keep their own buckets meanwhile.
	if !answered(1) || answered(1) {
		t.Fatal("table entry lost")
	}
	// Once entries have refilled they are swept, and new sources get room.
	clk.Advance(3 * time.Second)
	if !answered(5) || !answered(5) || answered(5) {
		t.Fatal("source 5 did not get its own bucket after the sweep")
	}
	if st := p.Stats(); st.RateSources != 1 {
		t.Fatalf("table holds %d sources after the sweep", st.RateSources)
	}
}

func TestRateLimitDisabled(t *testing.T) {
	p, _ := newTestProcessor(t, func(c *Config) { c.RateLimit.PerSecond = -1 })
	tx := &fakeSender{}
	for i := range 1000 {
		if r := p.Process(Primary, proto.AppendRS(nil, nonce, false), mapA, tx); r.Action != AnsweredRS {
			t.Fatalf("RS %d: %+v", i, r)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no primary", Config{}},
		{"IPv6 primary", Config{Primary: native}},
		{"IPv6 secondary", Config{Primary: tPrimary, Secondary: native}},
		{"secondary equals primary", Config{Primary: tPrimary, Secondary: tPrimary}},
		{"no primary+1", Config{Primary: netip.MustParseAddr("255.255.255.255"), IPv4Filter: proto.AnyIPv4}},
		{"MTU too small", Config{Primary: tPrimary, MTU: 1279}},
		{"MTU too large", Config{Primary: tPrimary, MTU: 65536}},
		{"private primary", Config{Primary: netip.MustParseAddr("10.0.0.1")}},
		{"private secondary", Config{Primary: tPrimary, Secondary: netip.MustParseAddr("10.0.0.1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewProcessor(tt.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
	p, err := NewProcessor(Config{Primary: netip.MustParseAddr("::ffff:198.18.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Primary.String() != "198.18.0.1:3544" || st.Secondary.String() != "198.18.0.2:3544" || st.MTU != 1280 || st.IPv6Output {
		t.Fatalf("defaults: %+v", st)
	}
}

func TestStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := DropReason(0); r < NumDropReasons; r++ {
		s := r.String()
		if s == "" || seen[s] || strings.Contains(s, "reason(") {
			t.Errorf("reason %d: %q", r, s)
		}
		seen[s] = true
	}
	if NumDropReasons.String() != "reason(16)" || Action(9).String() != "action(9)" || Socket(2).String() != "socket(2)" {
		t.Error("out-of-range names")
	}
}

// TestNonIPv4Source checks that an IPv6 UDP source is refused even by a
// filter that accepts everything, and that a 4-in-6 source is unmapped.
func TestNonIPv4Source(t *testing.T) {
	p, _ := newTestProcessor(t, func(c *Config) { c.IPv4Filter = func(netip.Addr) bool { return true } })
	tx := &fakeSender{}
	rs := proto.AppendRS(nil, nonce, false)
	if r := p.Process(Primary, rs, netip.MustParseAddrPort("[2001:db8::1]:40000"), tx); r.Reason != DropSourceNotGlobal {
		t.Fatalf("IPv6 source: %+v", r)
	}
	if r := p.Process(Primary, rs, netip.AddrPort{}, tx); r.Reason != DropSourceNotGlobal {
		t.Fatalf("zero source: %+v", r)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(mapA.Addr().As16()), mapA.Port())
	if r := p.Process(Primary, bubble(teredoA, teredoB), mapped, tx); r.Action != ForwardedTeredo {
		t.Fatalf("4-in-6 source: %+v", r)
	}
	if len(tx.sent) != 1 || !bytes.HasPrefix(tx.sent[0].b, proto.AppendOrigin(nil, mapA)) {
		t.Fatalf("sent %+v", tx.sent)
	}
}
