package tun

import (
	"bytes"
	"encoding/binary"
	"github.com/teredo-go/teredo/proto"
	"slices"
	"testing"
)

// destOpts inserts an 8-byte destination options header (PadN) between the
// IPv6 and the TCP header of p.
func destOpts(p []byte) []byte {
	q := slices.Concat(p[:40], []byte{p[6], 0, 1, 4, 0, 0, 0, 0}, p[40:])
	q[6] = ipv6DestOpts
	binary.BigEndian.PutUint16(q[4:], uint16(len(q)-40))
	return q
}

// asRead prepends the header h to p, as the kernel hands a packet over, and
// for a packet whose checksum it leaves to the device puts the pseudo-header
// sum into the field as the kernel does.
func asRead(h vnetHdr, p []byte) []byte {
	b := make([]byte, vnetHdrLen, vnetHdrLen+len(p))
	h.encode(b)
	b = append(b, p...)
	if h.flags&vnetFlagNeedsCsum != 0 && h.gsoType == vnetGSOTCPv6 {
		q := b[vnetHdrLen:]
		if at := int(h.csumStart) + 16; at+2 <= len(q) && int(h.csumStart) <= len(q) && len(q) >= 40 {
			binary.BigEndian.PutUint16(q[at:], uint16(pseudoSum(q, len(q)-int(h.csumStart))))
		}
	}
	return b
}

// tsoHdr is the header the kernel gives a super-packet whose TCP header is
// at tcpOff.
func tsoHdr(tcpOff, mss int) vnetHdr {
	return vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv6, hdrLen: 1400, gsoSize: uint16(mss),
		csumStart: uint16(tcpOff), csumOffset: 16}
}

// refSplit is tcp_gso_segment written plainly: the segments of super-packet
// p, whose TCP header is at tcpOff, with checksums from sum16.
func refSplit(p []byte, tcpOff, mss int) [][]byte {
	hl := tcpOff + int(p[tcpOff+12]>>4)*4
	payload := p[hl:]
	seq := binary.BigEndian.Uint32(p[tcpOff+4:])
	flags := p[tcpOff+13]
	var out [][]byte
	for off := 0; ; off += mss {
		end := min(off+mss, len(payload))
		s := slices.Concat(p[:hl], payload[off:end])
		binary.BigEndian.PutUint16(s[4:], uint16(len(s)-40))
		binary.BigEndian.PutUint32(s[tcpOff+4:], seq+uint32(off))
		f := flags
		if end < len(payload) {
			f &^= tcpFIN | tcpPSH
		}
		if off > 0 {
			f &^= tcpCWR
		}
		s[tcpOff+13] = f
		s[tcpOff+16], s[tcpOff+17] = 0, 0
		binary.BigEndian.PutUint16(s[tcpOff+16:], ^uint16(sum16(pseudoSum(s, len(s)-tcpOff), s[tcpOff:])))
		out = append(out, s)
		if end == len(payload) {
			return out
		}
	}
}

// tcpValid reports whether the TCP checksum of p, whose TCP header is at
// tcpOff, is right.
func tcpValid(p []byte, tcpOff int) bool {
	return sum16(pseudoSum(p, len(p)-tcpOff), p[tcpOff:]) == 0xffff
}

// splitAll loads b into a splitter and returns every packet it hands out
// into buffers of size bytes.
func splitAll(s *splitter, b []byte, size int) [][]byte {
	n := copy(s.buf, b)
	s.load(s.buf[:n])
	var out [][]byte
	for i := 0; s.pending(); i++ {
		if i > 1<<17 {
			panic("the splitter does not finish")
		}
		dst := make([]byte, size)
		if n := s.next(dst); n > 0 {
			out = append(out, dst[:n])
		}
	}
	return out
}

func TestSplit(t *testing.T) {
	const mss = proto.MinMTU - 60
	big := seg{seq: 1000, ack: 7, flags: tcpACK | tcpPSH, n: 3 * mss}.build()
	odd := seg{seq: 1000, ack: 7, flags: tcpACK, n: 3*mss + 7}.build()
	wrap := seg{seq: 0xffffffff - 1500, ack: 7, flags: tcpACK, n: 2*mss + 1}.build()
	fin := seg{seq: 5, ack: 7, flags: tcpACK | tcpPSH | tcpFIN | tcpCWR, n: 4*mss - 100}.build()
	ts := seg{seq: 9, ack: 7, flags: tcpACK, opts: ts1, n: 5 * (mss - 12)}.build()
	one := seg{seq: 9, ack: 7, flags: tcpACK | tcpPSH | tcpFIN | tcpCWR, n: 300}.build()
	empty := seg{seq: 9, ack: 7, flags: tcpACK | tcpFIN, n: 0}.build()
	ext := destOpts(seg{seq: 77, ack: 7, flags: tcpACK, n: 2*mss + 3}.build())
	largest := seg{seq: 1, ack: 7, flags: tcpACK, n: 65535 - 20}.build()
	plain := seg{seq: 3, ack: 7, flags: tcpACK, n: 100}.build()
	partial := slices.Clone(plain)
	binary.BigEndian.PutUint16(partial[56:], uint16(pseudoSum(plain, len(plain)-40)))
	wrongLen := slices.Clone(big)
	binary.BigEndian.PutUint16(wrongLen[4:], uint16(len(big)-41))
	routing := slices.Clone(ext)
	routing[6] = 43
	tiny := slices.Clone(big[:50])
	binary.BigEndian.PutUint16(tiny[4:], 10)
	longOff := slices.Clone(big[:100])
	binary.BigEndian.PutUint16(longOff[4:], 60)
	longOff[52] = 15 << 4 // 60 bytes of TCP header in a 60-byte segment
	shortOff := slices.Clone(big)
	shortOff[52] = 4 << 4
	v4 := slices.Clone(big)
	v4[0] = 0x45
	with := func(h vnetHdr, f func(*vnetHdr)) vnetHdr { f(&h); return h }
	h := tsoHdr(40, mss)

	for _, tt := range []struct {
		name string
		hdr  vnetHdr
		pkt  []byte
		want [][]byte // nil: dropped
	}{
		{"even", h, big, refSplit(big, 40, mss)},
		{"odd last segment", h, odd, refSplit(odd, 40, mss)},
		{"sequence wrap", h, wrap, refSplit(wrap, 40, mss)},
		{"FIN PSH CWR", h, fin, refSplit(fin, 40, mss)},
		{"timestamps", tsoHdr(40, mss-12), ts, refSplit(ts, 40, mss-12)},
		{"one segment", h, one, [][]byte{refSplit(one, 40, mss)[0]}},
		{"no payload", h, empty, refSplit(empty, 40, mss)},
		{"small mss", tsoHdr(40, 100), odd, refSplit(odd, 40, 100)},
		{"largest", h, largest, refSplit(largest, 40, mss)},
		{"destination options", tsoHdr(48, mss-8), ext, refSplit(ext, 48, mss-8)},
		{"hdr_len zero", with(h, func(h *vnetHdr) { h.hdrLen = 0 }), big, refSplit(big, 40, mss)},
		{"hdr_len huge", with(h, func(h *vnetHdr) { h.hdrLen = 65535 }), big, refSplit(big, 40, mss)},
		{"plain", vnetHdr{}, plain, [][]byte{plain}},
		{"plain, checksum left", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 40, csumOffset: 16}, partial, [][]byte{plain}},
		{"plain, data valid", vnetHdr{flags: 2}, plain, [][]byte{plain}},

		{"checksum field outside", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 200, csumOffset: 16}, plain, nil},
		{"short header", vnetHdr{}, nil, nil},
		{"gso_size 0", tsoHdr(40, 0), big, nil},
		{"segment over the MTU", tsoHdr(40, mss+1), big, nil},
		{"csum_start before TCP", tsoHdr(40, mss), ext, nil},
		{"csum_start past TCP", tsoHdr(44, mss), big, nil},
		{"csum_start beyond", tsoHdr(60000, mss), big, nil},
		{"csum_offset", with(h, func(h *vnetHdr) { h.csumOffset = 6 }), big, nil},
		{"checksum not left", with(h, func(h *vnetHdr) { h.flags = 0 }), big, nil},
		{"routing header", tsoHdr(48, mss-8), routing, nil},
		{"payload length wrong", h, wrongLen, nil},
		{"truncated TCP header", h, tiny, nil},
		{"data offset past the packet", h, longOff, nil},
		{"data offset short", h, shortOff, nil},
		{"IPv4", h, v4, nil},
		{"TCPv4", with(h, func(h *vnetHdr) { h.gsoType = 1 }), big, nil},
		{"UDP", with(h, func(h *vnetHdr) { h.gsoType = 3 }), big, nil},
		{"UDP L4", with(h, func(h *vnetHdr) { h.gsoType = 5 }), big, nil},
		{"ECN", with(h, func(h *vnetHdr) { h.gsoType |= vnetGSOECN }), big, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := new(counters)
			s := newSplitter(proto.MinMTU, st)
			in := asRead(tt.hdr, tt.pkt)
			if tt.name == "short header" {
				in = in[:7]
			}
			got := splitAll(s, in, 8192)
			if tt.want == nil {
				if len(got) != 0 || st.readDrops.Load() != 1 {
					t.Fatalf("%d packets, %d drops; want it dropped", len(got), st.readDrops.Load())
				}
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d packets, want %d", len(got), len(tt.want))
			}
			tcpOff := max(int(tt.hdr.csumStart), 40)
			for i := range got {
				if !bytes.Equal(got[i], tt.want[i]) {
					t.Fatalf("packet %d:\n got %x\nwant %x", i, got[i], tt.want[i])
				}
				if len(got[i]) > proto.MinMTU || !tcpValid(got[i], tcpOff) {
					t.Fatalf("packet %d: %d bytes, checksum valid %v", i, len(got[i]), tcpValid(got[i], tcpOff))
				}
			}
			super := uint64(0)
			if tt.hdr.gsoType != vnetGSONone {
				super = 1
			}
			if st.readDrops.Load() != 0 || st.readSuper.Load() != super || st.readSegments.Load() != super*uint64(len(got)) {
				t.Fatalf("drops %d, super %d, segments %d", st.readDrops.Load(), st.readSuper.Load(), st.readSegments.Load())
			}
		})
	}
}

// TestSplitSmallBuffer: a segment longer than the caller's buffer is
// dropped alone.
func TestSplitSmallBuffer(t *testing.T) {
	p := seg{seq: 1, ack: 7, flags: tcpACK, n: 2*1220 + 10}.build()
	st := new(counters)
	got := splitAll(newSplitter(proto.MinMTU, st), asRead(tsoHdr(40, 1220), p), 100)
	want := refSplit(p, 40, 1220)[2]
	if len(got) != 1 || !bytes.Equal(got[0], want) || st.readDrops.Load() != 2 {
		t.Fatalf("got %d packets, %d drops", len(got), st.readDrops.Load())
	}
}

func TestSplitAllocs(t *testing.T) {
	in := asRead(tsoHdr(40, 1220), seg{seq: 1, ack: 7, flags: tcpACK, n: 40 * 1220}.build())
	s := newSplitter(proto.MinMTU, new(counters))
	dst := make([]byte, 2048)
	if n := testing.AllocsPerRun(50, func() {
		s.load(s.buf[:copy(s.buf, in)])
		for s.pending() {
			s.next(dst)
		}
	}); n != 0 {
		t.Errorf("%v allocations per super-packet", n)
	}
}

func BenchmarkSplit(b *testing.B) {
	const segs = 53 // 64 KiB
	in := asRead(tsoHdr(40, 1220), seg{seq: 1, ack: 7, flags: tcpACK, n: segs * 1220}.build())
	s := newSplitter(proto.MinMTU, new(counters))
	dst := make([]byte, 2048)
	b.SetBytes(segs * 1220)
	b.ReportAllocs()
	for b.Loop() {
		s.load(s.buf[:copy(s.buf, in)])
		for s.pending() {
			s.next(dst)
		}
	}
}

// FuzzSplit feeds the splitter an arbitrary header and packet (with the
// IPv6 payload length made right if fix says so, to get past that check).
// It must never panic, every packet it hands out must fit the MTU, and a
// super-packet must come out as segments with valid TCP checksums whose
// payloads are the super-packet's. Inputs are up to 64 KiB, which the
// fuzzer minimizes slowly: run it with -fuzzminimizetime 50x.
func FuzzSplit(f *testing.F) {
	add := func(h vnetHdr, p []byte) {
		f.Add(h.flags, h.gsoType, h.hdrLen, h.gsoSize, h.csumStart, h.csumOffset, p, false)
	}
	add(tsoHdr(40, 1220), seg{seq: 1000, ack: 7, flags: tcpACK | tcpPSH | tcpCWR, n: 3*1220 + 9}.build())
	add(tsoHdr(40, 1208), seg{seq: 0xfffffff0, ack: 7, flags: tcpACK | tcpFIN, opts: ts1, n: 2500}.build())
	add(tsoHdr(48, 100), destOpts(seg{seq: 1, ack: 7, flags: tcpACK, n: 1000}.build()))
	add(vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 40, csumOffset: 16}, seg{seq: 3, ack: 7, flags: tcpACK, n: 100}.build())
	add(vnetHdr{}, []byte{0x60})
	f.Fuzz(func(t *testing.T, flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16, p []byte, fix bool) {
		if len(p) > maxWrite-vnetHdrLen {
			return
		}
		if fix && len(p) >= 40 {
			binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		}
		h := vnetHdr{flags: flags, gsoType: gsoType, hdrLen: hdrLen, gsoSize: gsoSize, csumStart: csumStart, csumOffset: csumOffset}
		in := asRead(h, p)
		st := new(counters)
		sp := newSplitter(proto.MinMTU, st)
		sp.load(sp.buf[:copy(sp.buf, in)])
		in = in[vnetHdrLen:]
		if st.readSuper.Load() == 0 {
			if sp.pending() && (len(sp.pkt) != len(in) || sp.next(make([]byte, maxWrite)) != len(in) || sp.pending()) {
				t.Fatal("a plain packet did not come out whole")
			}
			return
		}
		tcpOff := int(csumStart)
		hl := tcpOff + int(in[tcpOff+12]>>4)*4
		var payload []byte
		dst := make([]byte, 8192)
		for i := 0; sp.pending(); i++ {
			if i > len(in) {
				t.Fatal("the splitter does not finish")
			}
			s := dst[:sp.next(dst)]
			if len(s) > proto.MinMTU || len(s) < hl || !tcpValid(s, tcpOff) {
				t.Fatalf("segment %d of %d bytes (headers %d), checksum valid %v", i, len(s), hl, tcpValid(s, tcpOff))
			}
			if int(binary.BigEndian.Uint16(s[4:])) != len(s)-40 {
				t.Fatalf("segment %d: payload length %d for %d bytes", i, binary.BigEndian.Uint16(s[4:]), len(s))
			}
			if seq := binary.BigEndian.Uint32(s[tcpOff+4:]); seq != binary.BigEndian.Uint32(in[tcpOff+4:])+uint32(len(payload)) {
				t.Fatalf("segment %d: sequence number %d", i, seq)
			}
			payload = append(payload, s[hl:]...)
		}
		if !bytes.Equal(payload, in[hl:]) {
			t.Fatal("the segments' payloads are not the super-packet's")
		}
	})
}
