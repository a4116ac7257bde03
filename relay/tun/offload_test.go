package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// seg describes a TCP/IPv6 packet for the tests.
type seg struct {
	flow    byte // picks the source port (and so the flow)
	seq     uint32
	ack     uint32
	flags   byte
	window  uint16
	opts    []byte
	n       int  // payload length
	hop     byte // hop limit; 0 means 64
	badSum  bool // corrupt the checksum
	nextHdr byte // when not 0: replace TCP by this next header
}

// sum16 is the one's complement sum of b, a reference independent of the
// code under test.
func sum16(initial uint32, b []byte) uint32 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return s
}

// pseudoSum is the pseudo-header sum of IPv6 packet p for TCP with upper
// layer length l.
func pseudoSum(p []byte, l int) uint32 {
	return sum16(sum16(0, p[8:40])+uint32(l>>16)+uint32(l&0xffff)+6, nil)
}

// setTCPChecksum fills in the TCP checksum of p.
func setTCPChecksum(p []byte) {
	t := p[40:]
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[16:], ^uint16(sum16(pseudoSum(p, len(t)), t)))
}

func (s seg) build() []byte {
	th := 20 + len(s.opts)
	p := make([]byte, 40+th+s.n)
	p[0], p[1], p[2], p[3] = 0x60, 0, 0, 1
	binary.BigEndian.PutUint16(p[4:], uint16(th+s.n))
	p[6], p[7] = 6, 64
	if s.hop != 0 {
		p[7] = s.hop
	}
	copy(p[8:], []byte{0x20, 0x01, 0, 0, 0xcb, 0, 0x71, 1, 0, 0, 0, 0, 0, 0, 0, 1})
	copy(p[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	t := p[40:]
	binary.BigEndian.PutUint16(t[0:], 40000+uint16(s.flow))
	binary.BigEndian.PutUint16(t[2:], 443)
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = byte(th/4) << 4
	t[13] = s.flags
	if s.window == 0 {
		s.window = 512
	}
	binary.BigEndian.PutUint16(t[14:], s.window)
	copy(t[20:], s.opts)
	for i := range s.n {
		t[th+i] = byte(int(s.seq) + i)
	}
	setTCPChecksum(p)
	if s.badSum {
		t[17] ^= 0x5a
	}
	if s.nextHdr != 0 {
		p[6] = s.nextHdr
	}
	return p
}

// resegment splits a write as the kernel's GSO would, recomputing the TCP
// checksums; a write without GSO is returned as it is.
func resegment(t testing.TB, b []byte) [][]byte {
	t.Helper()
	if len(b) < vnetHdrLen {
		t.Fatalf("write of %d bytes", len(b))
	}
	h := decodeVnetHdr(b)
	p := b[vnetHdrLen:]
	if h.gsoType == vnetGSONone {
		if h != (vnetHdr{}) {
			t.Fatalf("plain write with header %+v", h)
		}
		return [][]byte{slices.Clone(p)}
	}
	hl, size := int(h.hdrLen), int(h.gsoSize)
	if h.gsoType != vnetGSOTCPv6 || h.flags != vnetFlagNeedsCsum || h.csumStart != 40 || h.csumOffset != 16 ||
		hl < 60 || hl > len(p) || size == 0 || int(p[40+12]>>4)*4 != hl-40 {
		t.Fatalf("bad GSO header %+v", h)
	}
	l := len(p) - 40
	if int(binary.BigEndian.Uint16(p[4:])) != l {
		t.Fatalf("payload length %d, want %d", binary.BigEndian.Uint16(p[4:]), l)
	}
	if got, want := uint32(binary.BigEndian.Uint16(p[56:])), pseudoSum(p, l); got != want {
		t.Fatalf("checksum field %#04x, want pseudo-header sum %#04x", got, want)
	}
	var out [][]byte
	seq := binary.BigEndian.Uint32(p[44:])
	for off := hl; off < len(p); off += size {
		end := min(off+size, len(p))
		s := append(slices.Clone(p[:hl]), p[off:end]...)
		binary.BigEndian.PutUint16(s[4:], uint16(len(s)-40))
		binary.BigEndian.PutUint32(s[44:], seq+uint32(off-hl))
		if end < len(p) {
			s[53] &^= tcpPSH | tcpFIN
		}
		setTCPChecksum(s)
		out = append(out, s)
	}
	if len(out) < 2 || len(out) > MaxSegments {
		t.Fatalf("super-segment of %d segments", len(out))
	}
	return out
}

// flowOf is the flow a packet belongs to for the order check, as the
// coalescer sees it: TCP right after the IPv6 header, or no flow.
func flowOf(p []byte) string {
	if len(p) >= 60 && p[0]>>4 == 6 && p[6] == 6 {
		return string(p[8:44])
	}
	return ""
}

// checkWrites checks that writes, re-segmented, are the packets of in, each
// flow's in its order, and respect the limits; it returns the number of
// segments per write.
func checkWrites(t testing.TB, in [][]byte, writes [][]byte, counts []int) []int {
	t.Helper()
	want := map[string][][]byte{}
	for _, p := range in {
		want[flowOf(p)] = append(want[flowOf(p)], p)
	}
	var segs []int
	for i, w := range writes {
		if len(w) > maxWrite {
			t.Fatalf("write %d of %d bytes", i, len(w))
		}
		out := resegment(t, w)
		if len(out) != counts[i] {
			t.Fatalf("write %d carries %d segments, reported %d", i, len(out), counts[i])
		}
		segs = append(segs, len(out))
		psh := false // some original of this write had PSH
		for j, p := range out {
			f := flowOf(p)
			if len(want[f]) == 0 {
				t.Fatalf("write %d: packet %x not expected (any more) in its flow", i, p)
			}
			exp := want[f][0]
			want[f] = want[f][1:]
			if len(out) > 1 {
				// Re-segmented: the original had a valid checksum, so the
				// recomputed one must equal it.
				if sum16(pseudoSum(exp, len(exp)-40), exp[40:]) != 0xffff {
					t.Fatalf("write %d coalesced a segment with a bad checksum", i)
				}
			}
			if len(out) > 1 {
				// PSH may be on any original; the kernel's segmentation
				// leaves it on the last segment of the write only.
				psh = psh || exp[53]&tcpPSH != 0
				if got, want := p[53]&tcpPSH != 0, psh && j == len(out)-1; got != want {
					t.Fatalf("write %d: segment %d of %d has PSH %v, want %v", i, j, len(out), got, want)
				}
				if p[53]&tcpPSH != exp[53]&tcpPSH {
					exp = slices.Clone(exp)
					exp[53] ^= tcpPSH
					setTCPChecksum(exp)
				}
			}
			if !bytes.Equal(p, exp) {
				t.Fatalf("write %d: segment\n%x\nwant\n%x", i, p, exp)
			}
		}
	}
	for f, rest := range want {
		if len(rest) > 0 {
			t.Fatalf("flow %x: %d packets not written", f, len(rest))
		}
	}
	return segs
}

// collect runs a coalescer over in and returns its writes.
func collect(t testing.TB, in [][]byte) (writes [][]byte, counts []int, st *counters) {
	st = new(counters)
	c := newCoalescer(func(b []byte, segs int) error {
		writes = append(writes, slices.Clone(b))
		counts = append(counts, segs)
		return nil
	}, st)
	n, err := c.coalesce(in)
	if n != len(in) || err != nil {
		t.Fatalf("coalesce = %d, %v; want %d", n, err, len(in))
	}
	if c.nruns != 0 {
		t.Fatalf("%d runs left open", c.nruns)
	}
	return writes, counts, st
}

// stream returns n segments of flow f from seq, each size bytes long.
func stream(f byte, seq uint32, n, size int) []seg {
	var s []seg
	for range n {
		s = append(s, seg{flow: f, seq: seq, ack: 7, flags: tcpACK, n: size})
		seq += uint32(size)
	}
	return s
}

func with(s seg, f func(*seg)) seg { f(&s); return s }

var ts1 = []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
var ts2 = []byte{1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 2}

func TestCoalesce(t *testing.T) {
	const m = 1220
	a := stream(0, 1000, 70, m)
	b := stream(1, 5000, 70, m)
	small := stream(2, 0, 70, 100)
	withTS := func(s []seg, o []byte) []seg {
		s = slices.Clone(s)
		for i := range s {
			s[i].opts = o
			s[i].n -= len(o)
			if i > 0 {
				s[i].seq = s[i-1].seq + uint32(s[i-1].n)
			}
		}
		return s
	}
	tsA := withTS(a[:4], ts1)
	var pshAll []seg
	for _, x := range a[:4] {
		pshAll = append(pshAll, with(x, func(s *seg) { s.flags |= tcpPSH }))
	}
	tests := []struct {
		name string
		in   []seg
		want []int // segments per write, in order
		bad  uint64
	}{
		{"one", a[:1], []int{1}, 0},
		{"consecutive", a[:3], []int{3}, 0},
		{"seq gap", []seg{a[0], a[1], a[3], a[4]}, []int{2, 2}, 0},
		{"retransmission", []seg{a[0], a[1], a[1], a[2]}, []int{2, 2}, 0},
		{"fin ends", []seg{a[0], a[1], with(a[2], func(s *seg) { s.flags |= tcpFIN })}, []int{2, 1}, 0},
		{"syn", []seg{with(a[0], func(s *seg) { s.flags = tcpSYN; s.n = 0 }), a[0], a[1]}, []int{1, 2}, 0},
		{"rst", []seg{a[0], a[1], with(a[2], func(s *seg) { s.flags = tcpRST | tcpACK })}, []int{2, 1}, 0},
		{"ece", []seg{a[0], with(a[1], func(s *seg) { s.flags |= 0x40 }), a[2]}, []int{1, 1, 1}, 0},
		{"pure ack", []seg{a[0], a[1], with(a[2], func(s *seg) { s.n = 0 }), a[2]}, []int{2, 1, 1}, 0},
		{"psh joins", []seg{a[0], with(a[1], func(s *seg) { s.flags |= tcpPSH }), a[2], a[3]}, []int{4}, 0},
		{"psh first", []seg{with(a[0], func(s *seg) { s.flags |= tcpPSH }), a[1], a[2]}, []int{3}, 0},
		{"psh on every segment", pshAll, []int{4}, 0},
		{"short closes", []seg{a[0], a[1], with(a[2], func(s *seg) { s.n = 500 }), {flow: 0, seq: a[2].seq + 500, ack: 7, flags: tcpACK, n: m}}, []int{3, 1}, 0},
		{"longer than first", []seg{with(a[0], func(s *seg) { s.n = 500 }), {flow: 0, seq: a[0].seq + 500, ack: 7, flags: tcpACK, n: m}}, []int{1, 1}, 0},
		{"ack differs", []seg{a[0], with(a[1], func(s *seg) { s.ack = 8 })}, []int{1, 1}, 0},
		{"window differs", []seg{a[0], with(a[1], func(s *seg) { s.window = 100 })}, []int{1, 1}, 0},
		{"hop limit differs", []seg{a[0], with(a[1], func(s *seg) { s.hop = 63 })}, []int{1, 1}, 0},
		{"timestamps", tsA, []int{4}, 0},
		{"timestamps differ", []seg{tsA[0], tsA[1], with(tsA[2], func(s *seg) { s.opts = ts2 }), tsA[3]}, []int{2, 1, 1}, 0},
		{"options differ in length", []seg{a[0], with(a[1], func(s *seg) { s.opts = ts1; s.n -= 12 })}, []int{1, 1}, 0},
		{"interleaved flows", []seg{a[0], b[0], a[1], b[1], a[2]}, []int{3, 2}, 0},
		{"udp between", []seg{a[0], a[1], with(b[0], func(s *seg) { s.nextHdr = 17 }), a[2]}, []int{1, 3}, 0},
		{"extension header flushes", []seg{a[0], a[1], with(b[0], func(s *seg) { s.nextHdr = 43 }), a[2], a[3]}, []int{2, 1, 2}, 0},
		{"bad checksum", []seg{a[0], with(a[1], func(s *seg) { s.badSum = true }), a[2], a[3]}, []int{1, 1, 2}, 1},
		{"bad checksum first", []seg{with(a[0], func(s *seg) { s.badSum = true }), a[1], a[2]}, []int{1, 2}, 1},
		{"64 KiB", a[:60], []int{53, 7}, 0},
		{"64 segments", small, []int{64, 6}, 0},
	}
	// Nine flows interleaved: the oldest run makes room for the ninth.
	var nine []seg
	for i := range 3 {
		for f := range byte(9) {
			nine = append(nine, seg{flow: 10 + f, seq: uint32(i * 100), flags: tcpACK, n: 100})
		}
	}
	tests = append(tests, struct {
		name string
		in   []seg
		want []int
		bad  uint64
	}{"nine flows", nine, nil, 0})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in [][]byte
			for _, s := range tt.in {
				in = append(in, s.build())
			}
			writes, counts, st := collect(t, in)
			got := checkWrites(t, in, writes, counts)
			if tt.want != nil && !slices.Equal(got, tt.want) {
				t.Errorf("segments per write %v, want %v", got, tt.want)
			}
			if st.badChecksum.Load() != tt.bad {
				t.Errorf("%d bad checksums counted, want %d", st.badChecksum.Load(), tt.bad)
			}
			if w, p := st.writes.Load(), st.packets.Load(); int(w) != len(writes) || int(p) != len(in) {
				t.Errorf("counted %d writes of %d packets, want %d of %d", w, p, len(writes), len(in))
			}
		})
	}
}

// TestSuperSegment checks the bytes of a super-segment field by field.
func TestSuperSegment(t *testing.T) {
	s := stream(3, 0xfffff000, 3, 1000) // the sequence number wraps
	s[0].opts, s[1].opts, s[2].opts = ts1, ts1, ts1
	s[2].flags |= tcpPSH
	s[2].n = 600
	var in [][]byte
	for _, x := range s {
		in = append(in, x.build())
	}
	writes, _, st := collect(t, in)
	if len(writes) != 1 {
		t.Fatalf("%d writes", len(writes))
	}
	w := writes[0]
	h := decodeVnetHdr(w)
	if want := (vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv6, hdrLen: 72, gsoSize: 1000, csumStart: 40, csumOffset: 16}); h != want {
		t.Fatalf("header %+v, want %+v", h, want)
	}
	p := w[vnetHdrLen:]
	if len(p) != 72+2600 || binary.BigEndian.Uint16(p[4:]) != 32+2600 {
		t.Fatalf("length %d, payload length %d", len(p), binary.BigEndian.Uint16(p[4:]))
	}
	if !bytes.Equal(p[:4], in[0][:4]) || !bytes.Equal(p[6:44], in[0][6:44]) {
		t.Fatal("IPv6 header or ports differ from the first segment's")
	}
	if binary.BigEndian.Uint32(p[44:]) != 0xfffff000 || p[53] != tcpACK|tcpPSH || !bytes.Equal(p[60:72], ts1) {
		t.Fatalf("TCP header %x", p[40:72])
	}
	if got, want := uint32(binary.BigEndian.Uint16(p[56:])), pseudoSum(p, 32+2600); got != want {
		t.Fatalf("checksum field %#x, want %#x", got, want)
	}
	var payload []byte
	for _, x := range in {
		payload = append(payload, x[72:]...)
	}
	if !bytes.Equal(p[72:], payload) {
		t.Fatal("payload differs")
	}
	if st.coalesced.Load() != 3 {
		t.Errorf("coalesced %d", st.coalesced.Load())
	}
}

// TestCoalesceWriteError: a failed write loses its own packets only, and
// a refused super-segment is tried again segment by segment.
func TestCoalesceWriteError(t *testing.T) {
	a, b := stream(0, 0, 3, 1000), stream(1, 0, 2, 1000)
	in := [][]byte{a[0].build(), b[0].build(), a[1].build(), a[2].build(), b[1].build()}
	boom := errors.New("boom")
	for _, tt := range []struct {
		name           string
		refuse         func(b []byte) bool
		written, calls int
		gsoFails, errs uint64
		wantErr        error
	}{
		// Flow 0 (source port 40000) is refused whole: its super-segment,
		// then each of its segments.
		{"flow", func(b []byte) bool { return binary.BigEndian.Uint16(b[vnetHdrLen+40:]) == 40000 }, 2, 5, 1, 3, boom},
		{"gso", func(b []byte) bool { return b[1] != vnetGSONone }, 5, 7, 2, 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			c := newCoalescer(func(b []byte, segs int) error {
				calls++
				if tt.refuse(b) {
					return fmt.Errorf("write: %w", boom)
				}
				return nil
			}, new(counters))
			n, err := c.coalesce(in)
			if n != tt.written || !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) || calls != tt.calls {
				t.Fatalf("coalesce = %d, %v after %d writes; want %d, %v, %d", n, err, calls, tt.written, tt.wantErr, tt.calls)
			}
			st := c.stats.load()
			if st.GSOFallbacks != tt.gsoFails || st.WriteErrors != tt.errs || st.Packets != uint64(tt.written) || st.Writes != uint64(tt.calls) {
				t.Errorf("stats %+v", st)
			}
			// The next call starts afresh.
			c.write = func([]byte, int) error { return nil }
			if n, err := c.coalesce(in[:1]); n != 1 || err != nil {
				t.Fatalf("second coalesce = %d, %v", n, err)
			}
			if err := c.writeOne(make([]byte, maxWrite)); err == nil {
				t.Error("oversized packet written")
			}
		})
	}
}

func TestCoalesceAllocs(t *testing.T) {
	var in [][]byte
	for _, s := range append(stream(0, 0, 40, 1220), stream(1, 0, 40, 1220)...) {
		in = append(in, s.build())
	}
	c := newCoalescer(func([]byte, int) error { return nil }, new(counters))
	if n := testing.AllocsPerRun(100, func() { c.coalesce(in) }); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
}

func BenchmarkCoalesce(b *testing.B) {
	var in [][]byte
	for _, s := range stream(0, 0, 32, 1220) {
		in = append(in, s.build())
	}
	c := newCoalescer(func([]byte, int) error { return nil }, new(counters))
	b.SetBytes(int64(32 * 1280))
	b.ReportAllocs()
	for b.Loop() {
		c.coalesce(in)
	}
}

// FuzzCoalesce builds a batch from the input: mostly valid TCP segments of
// sixteen flows with fields the fuzzer picks, and raw packets. Whatever the
// batch, the coalescer must write every packet once, each flow's in order,
// within the limits, and merge only what re-segments into the originals.
func FuzzCoalesce(f *testing.F) {
	f.Add([]byte{0, 0, 10, 0, 0, 10, 0, 0, 10, 1, 0, 10, 0, 4, 10})
	f.Add([]byte{0, 0, 200, 0, 1, 200, 0x80, 3, 0x60, 0, 0, 0x90, 0, 5, 0, 0, 0})
	f.Add([]byte{2, 2, 255, 2, 0, 255, 2, 8, 1, 3, 0, 7})
	f.Fuzz(func(t *testing.T, data []byte) {
		var in [][]byte
		seqs := [16]uint32{}
		for len(data) >= 3 && len(in) < 200 {
			op, x, y := data[0], data[1], data[2]
			data = data[3:]
			if op&0x80 != 0 {
				// Raw: y bytes of what follows.
				n := min(int(y), len(data))
				in = append(in, slices.Clone(data[:n]))
				data = data[n:]
				continue
			}
			f := op&3 | x>>6<<2
			s := seg{flow: f, seq: seqs[f], ack: 7, flags: tcpACK, n: int(y) * 6}
			if x&1 != 0 {
				s.seq += 10 // a gap
			}
			if x&2 != 0 {
				s.flags |= tcpPSH
			}
			if x&4 != 0 {
				s.opts = ts1
			}
			if x&8 != 0 {
				s.badSum = true
			}
			if x&16 != 0 {
				s.flags = x & 0x3f
			}
			if x&32 != 0 {
				s.hop = 1
			}
			if op&4 != 0 {
				s.nextHdr = []byte{60, 17, 43, 58}[op>>3&3]
			}
			seqs[f] = s.seq + uint32(s.n)
			in = append(in, s.build())
		}
		writes, counts, _ := collect(t, in)
		checkWrites(t, in, writes, counts)
	})
}
