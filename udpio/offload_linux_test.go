//go:build linux && !udpio_portable

package udpio_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/udpio"
)

// readSplit reads until n datagrams have arrived on c, splitting coalesced
// messages, and returns them with the number of coalesced messages seen.
func readSplit(t *testing.T, c udpio.Conn, n, bufSize int) (data [][]byte, coalesced int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	msgs := make([]udpio.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, bufSize)}
	}
	for len(data) < n {
		k, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(data), n, err)
		}
		for _, m := range msgs[:k] {
			if m.SegmentSize > 0 && m.N > m.SegmentSize {
				coalesced++
			}
			if m.N == 0 {
				data = append(data, []byte{})
			}
			for rest := m.Buffers[0][:m.N]; len(rest) > 0; {
				var d []byte
				d, rest = udpio.NextSegment(rest, m.SegmentSize)
				data = append(data, bytes.Clone(d))
			}
		}
	}
	return data, coalesced
}

// gsoBatch returns messages of the given sizes to the given destinations,
// each filled with a byte identifying it.
func gsoBatch(sizes []int, dsts []netip.AddrPort) []udpio.Message {
	msgs := make([]udpio.Message, len(sizes))
	for i, n := range sizes {
		b := bytes.Repeat([]byte{byte(i)}, n)
		// Split some datagrams over two buffers, as the link's are.
		bufs := [][]byte{b}
		if n > 40 && i%2 == 0 {
			bufs = [][]byte{b[:40], b[40:]}
		}
		msgs[i] = udpio.Message{Buffers: bufs, Addr: dsts[i%len(dsts)]}
	}
	return msgs
}

func checkDatagrams(t *testing.T, got [][]byte, want []udpio.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i, m := range want {
		if w := bytes.Join(m.Buffers, nil); !bytes.Equal(got[i], w) {
			t.Fatalf("datagram %d: got %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(w), w[0])
		}
	}
}

func TestGSO(t *testing.T) {
	a := listen(t, udpio.Options{DisableGRO: true})
	if gso, _ := a.Offload(); !gso {
		t.Skip("kernel without UDP_SEGMENT")
	}
	b, c := listen(t, plain), listen(t, plain)
	tests := []struct {
		name  string
		sizes []int
		dsts  []netip.AddrPort
	}{
		{"equal", []int{1280, 1280, 1280, 1280}, []netip.AddrPort{b.LocalAddr()}},
		{"short last", []int{1280, 1280, 1280, 700}, []netip.AddrPort{b.LocalAddr()}},
		{"short middle", []int{1280, 700, 1280, 1280, 1}, []netip.AddrPort{b.LocalAddr()}},
		{"longer later", []int{100, 100, 1280, 1280}, []netip.AddrPort{b.LocalAddr()}},
		{"two destinations", []int{1280, 1280, 1280, 1280}, []netip.AddrPort{b.LocalAddr(), c.LocalAddr()}},
		{"over 64 segments", repeat(100, 150), []netip.AddrPort{b.LocalAddr()}},
		{"over 64 KiB", repeat(1280, 60), []netip.AddrPort{b.LocalAddr()}},
		{"empty", []int{0, 0, 10, 10}, []netip.AddrPort{b.LocalAddr()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs := gsoBatch(tt.sizes, tt.dsts)
			n, err := a.WriteBatch(msgs)
			if n != len(msgs) || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			for i, m := range msgs {
				if m.N != tt.sizes[i] {
					t.Fatalf("msgs[%d].N = %d, want %d", i, m.N, tt.sizes[i])
				}
			}
			for j, dst := range []*udpio.UDPConn{b, c}[:len(tt.dsts)] {
				var want []udpio.Message
				for i, m := range msgs {
					if i%len(tt.dsts) == j {
						want = append(want, m)
					}
				}
				got, _ := readSplit(t, dst, len(want), 2048)
				checkDatagrams(t, got, want)
			}
		})
	}
	if s := a.Stats(); s.GSOFallbacks != 0 {
		t.Errorf("Stats = %+v, want no GSO fallbacks", s)
	}
}

func repeat(size, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = size
	}
	return s
}

// A send the kernel refuses to segment (here because checksums are off,
// which UDP GSO needs) is sent again datagram by datagram, and GSO stays
// off for the socket.
func TestGSOFallback(t *testing.T) {
	a := listen(t, udpio.Options{DisableGRO: true})
	if gso, _ := a.Offload(); !gso {
		t.Skip("kernel without UDP_SEGMENT")
	}
	b := listen(t, plain)
	rc, _ := a.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
	if serr != nil {
		t.Skipf("SO_NO_CHECK: %v", serr)
	}
	msgs := gsoBatch([]int{1, 1000, 1000, 1000, 2, 3}, []netip.AddrPort{b.LocalAddr()})
	if n, err := a.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got, _ := readSplit(t, b, len(msgs), 2048)
	checkDatagrams(t, got, msgs)
	if s := a.Stats(); s.GSOFallbacks != 1 {
		t.Errorf("Stats = %+v, want 1 GSO fallback", s)
	}
	if gso, _ := a.Offload(); gso {
		t.Error("GSO still on after the kernel refused it")
	}
}

// With GSO on the sender and GRO on the receiver, loopback hands the
// receiver the coalesced message intact; NextSegment recovers the datagrams.
func TestGRO(t *testing.T) {
	a := listen(t, udpio.Options{DisableGRO: true})
	b := listen(t, udpio.Options{DisableGSO: true})
	gso, _ := a.Offload()
	_, gro := b.Offload()
	if !gso || !gro {
		t.Skipf("kernel offloads: GSO %v, GRO %v", gso, gro)
	}
	msgs := gsoBatch([]int{1280, 1280, 1280, 1280, 1280, 500, 90, 1280}, []netip.AddrPort{b.LocalAddr()})
	if n, err := a.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got, coalesced := readSplit(t, b, len(msgs), udpio.MaxGROSize)
	checkDatagrams(t, got, msgs)
	if coalesced == 0 {
		t.Error("no coalesced message received")
	}
}

func TestNextSegment(t *testing.T) {
	tests := []struct {
		n, seg int
		want   []int
	}{
		{0, 0, nil},
		{10, 0, []int{10}},
		{10, 10, []int{10}},
		{10, 20, []int{10}},
		{10, 4, []int{4, 4, 2}},
		{12, 4, []int{4, 4, 4}},
		{10, -1, []int{10}},
	}
	for _, tt := range tests {
		var got []int
		for rest := make([]byte, tt.n); len(rest) > 0; {
			var d []byte
			d, rest = udpio.NextSegment(rest, tt.seg)
			got = append(got, len(d))
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("NextSegment(%d bytes, %d): %v, want %v", tt.n, tt.seg, got, tt.want)
		}
	}
}

// TestOffloadSteadyStateAllocs: a GSO send and GRO receive allocate
// nothing once warmed up.
func TestOffloadSteadyStateAllocs(t *testing.T) {
	a, b := listen(t, udpio.Options{DisableGRO: true}), listen(t, udpio.Options{DisableGSO: true})
	out := gsoBatch(repeat(1280, 32), []netip.AddrPort{b.LocalAddr()})
	in := make([]udpio.Message, 8)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, udpio.MaxGROSize)}
	}
	b.SetReadDeadline(time.Now().Add(time.Minute))
	var failed error
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := a.WriteBatch(out); err != nil && failed == nil {
			failed = err
		}
		for got := 0; got < len(out) && failed == nil; {
			k, err := b.ReadBatch(in)
			if err != nil {
				failed = err
			}
			for _, m := range in[:k] {
				got += (m.N + 1279) / 1280
			}
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per 32-datagram offloaded round trip, want 0", allocs)
	}
}
