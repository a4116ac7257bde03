package server

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// FuzzProcess feeds arbitrary datagrams to the processing core: it must not
// panic, and what it reports must match what it sent.
func FuzzProcess(f *testing.F) {
	seeds := [][]byte{
		proto.AppendRS(nil, nonce, false),
		proto.AppendRS(nil, nonce, true),
		bubble(teredoA, teredoB),
		bubble(native, teredoB),
		cat(proto.AppendAuth(nil, &proto.Auth{ClientID: []byte("id"), Value: []byte("v"), Nonce: nonce}), proto.AppendOrigin(nil, mapA), bubble(teredoA, teredoC), []byte{1, 4, 1, 2, 3, 4}),
		echo(teredoA, native, proto.ICMPEchoRequest, 22),
		echo(teredoA, teredoB, proto.ICMPEchoReply, 80),
		{0, 1, 255, 255},
		{0x60},
	}
	for i, s := range seeds {
		f.Add(s, mapA.Addr().AsSlice(), mapA.Port(), i%2 == 0)
	}
	f.Add(bubble(teredoA, teredoB), tPrimary.AsSlice(), uint16(proto.Port), true)
	f.Fuzz(func(t *testing.T, payload, ip []byte, port uint16, secondary bool) {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		out := &fakeOutput{}
		p, _ := newTestProcessor(t, func(c *Config) {
			c.IPv4Filter = proto.AnyIPv4
			c.IPv6Output = out
		})
		sock := Primary
		if secondary {
			sock = Secondary
		}
		tx := &fakeSender{}
		r := p.Process(sock, payload, netip.AddrPortFrom(a, port), tx)
		wantSent := 0
		if r.Action == AnsweredRS || r.Action == ForwardedTeredo {
			wantSent = 1
		}
		if len(tx.sent) != wantSent || (r.Action == Dropped) == (r.Reason == NotDropped) {
			t.Fatalf("%v/%v with %d datagrams sent", r.Action, r.Reason, len(tx.sent))
		}
		if (r.Action == ForwardedIPv6) != (len(out.pkts) == 1) || len(out.pkts) > 1 {
			t.Fatalf("%v with %d packets on the IPv6 output", r.Action, len(out.pkts))
		}
		for _, s := range tx.sent {
			var pkt proto.Packet
			if err := pkt.Parse(s.b); err != nil || len(s.b) > maxOut {
				t.Fatalf("sent %d bytes that do not parse: %v", len(s.b), err)
			}
			if r.Action == ForwardedTeredo && s.sock != Primary {
				t.Fatal("forwarded from the secondary")
			}
		}
	})
}

// FuzzDropCountsJSON decodes arbitrary input as DropCounts: it must not
// panic, and whatever it accepts must survive encoding and decoding again
// unchanged.
func FuzzDropCountsJSON(f *testing.F) {
	var all DropCounts
	for r := range NumDropReasons {
		all[r] = uint64(r) << 40
	}
	b, _ := json.Marshal(all)
	for _, s := range []string{
		string(b), `{}`, `null`, `{"malformed":7,"from_the_future":[1]}`, `{"none":1}`,
		`{"rate_limited":18446744073709551615}`, `{"loop":-1}`, `{"loop":1e2}`, `{"loop":null}`,
		`[1]`, `"x"`, ``, `{"loop":1`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var d DropCounts
		if err := json.Unmarshal(in, &d); err != nil {
			return
		}
		var direct DropCounts
		if err := direct.UnmarshalJSON(in); err != nil || direct != d {
			t.Fatalf("UnmarshalJSON(%q) = %v, %v; json.Unmarshal gave %v", in, direct, err, d)
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("Marshal(%v): %v", d, err)
		}
		var again DropCounts
		if err := json.Unmarshal(b, &again); err != nil || again != d {
			t.Fatalf("%q decoded as %v, encoded as %s, decoded again as %v, %v", in, d, b, again, err)
		}
		if b2, _ := json.Marshal(again); !bytes.Equal(b2, b) {
			t.Fatalf("encodings differ: %s then %s", b, b2)
		}
	})
}
