package udpio_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// plain asks for a socket without offloads: one datagram per message, as
// most tests expect.
var plain = udpio.Options{DisableGSO: true, DisableGRO: true}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

// pairFunc returns two connected-by-address endpoints, closed at cleanup.
type pairFunc func(t *testing.T) (a, b udpio.Conn)

func udpPair(t *testing.T) (udpio.Conn, udpio.Conn) {
	t.Helper()
	a, err := udpio.Listen(loopback, plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := udpio.Listen(loopback, plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

func memPair(t *testing.T) (udpio.Conn, udpio.Conn) {
	t.Helper()
	nw := udpiotest.NewNetwork()
	nw.QueueLen = 8192
	a, err := nw.Listen(netip.MustParseAddrPort("192.0.2.1:3544"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := nw.Listen(netip.MustParseAddrPort("198.51.100.7:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// TestConn runs the Conn contract against the real socket and the
// in-memory network, so that tests using udpiotest see what production sees.
func TestConn(t *testing.T) {
	impls := []struct {
		name string
		pair pairFunc
	}{
		{"udp", udpPair},
		{"udpiotest", memPair},
	}
	tests := []struct {
		name string
		run  func(*testing.T, pairFunc)
	}{
		{"RoundTripBatch", testRoundTripBatch},
		{"ScatterRead", testScatterRead},
		{"WriteTo", testWriteTo},
		{"WriteBatchStopsAtBadAddr", testWriteBatchBadAddr},
		{"Deadline", testDeadline},
		{"CloseUnblocksRead", testCloseUnblocksRead},
		{"ConcurrentWriters", testConcurrentWriters},
		{"LongBatch", testLongBatch},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { tt.run(t, impl.pair) })
			}
		})
	}
}

// readN reads until n datagrams arrived or the deadline passed, copying
// each datagram out.
func readN(t *testing.T, c udpio.Conn, n, bufSize int) (data [][]byte, from []netip.AddrPort) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	defer c.SetReadDeadline(time.Time{})
	msgs := make([]udpio.Message, 16)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, bufSize)}
	}
	for len(data) < n {
		k, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(data), n, err)
		}
		if k < 1 || k > len(msgs) {
			t.Fatalf("ReadBatch returned %d", k)
		}
		for _, m := range msgs[:k] {
			data = append(data, bytes.Clone(m.Buffers[0][:m.N]))
			from = append(from, m.Addr)
		}
	}
	return data, from
}

func testRoundTripBatch(t *testing.T, pair pairFunc) {
	a, b := pair(t)
	dst := b.LocalAddr()
	msgs := []udpio.Message{
		{Buffers: [][]byte{[]byte("one")}, Addr: dst},
		{Buffers: [][]byte{[]byte("gat"), []byte("her"), {}, []byte("ed")}, Addr: dst},
		{Buffers: [][]byte{bytes.Repeat([]byte{0xab}, 1280)}, Addr: dst},
		{Buffers: [][]byte{}, Addr: dst}, // an empty datagram is a datagram
		{Buffers: [][]byte{[]byte("v4-mapped")}, Addr: netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())},
	}
	want := [][]byte{[]byte("one"), []byte("gathered"), msgs[2].Buffers[0], {}, []byte("v4-mapped")}
	n, err := a.WriteBatch(msgs)
	if err != nil || n != len(msgs) {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(msgs))
	}
	for i, m := range msgs {
		if m.N != len(want[i]) {
			t.Errorf("msgs[%d].N = %d, want %d", i, m.N, len(want[i]))
		}
	}
	got, from := readN(t, b, len(want), 2048)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("datagram %d = %q, want %q", i, got[i], want[i])
		}
		if from[i] != a.LocalAddr() {
			t.Errorf("datagram %d from %v, want %v", i, from[i], a.LocalAddr())
		}
	}
}

func testScatterRead(t *testing.T, pair pairFunc) {
	a, b := pair(t)
	if err := a.WriteTo([]byte("0123456789"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	b0, b1 := make([]byte, 4), make([]byte, 16)
	msgs := []udpio.Message{{Buffers: [][]byte{b0, b1}}}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.ReadBatch(msgs)
	if err != nil || n != 1 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	if got := string(b0) + string(b1[:msgs[0].N-len(b0)]); msgs[0].N != 10 || got != "0123456789" {
		t.Errorf("got N=%d %q", msgs[0].N, got)
	}
}

func testWriteTo(t *testing.T, pair pairFunc) {
	a, b := pair(t)
	for i := range 3 {
		if err := a.WriteTo(fmt.Appendf(nil, "dgram %d", i), b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := readN(t, b, 3, 64)
	for i := range 3 {
		if want := fmt.Sprintf("dgram %d", i); string(got[i]) != want {
			t.Errorf("datagram %d = %q, want %q", i, got[i], want)
		}
	}
	if err := a.WriteTo([]byte("x"), netip.MustParseAddrPort("[::1]:9")); !errors.Is(err, udpio.ErrNotIPv4) {
		t.Errorf("WriteTo IPv6 = %v, want ErrNotIPv4", err)
	}
}

func testWriteBatchBadAddr(t *testing.T, pair pairFunc) {
	a, b := pair(t)
	dst := b.LocalAddr()
	msgs := []udpio.Message{
		{Buffers: [][]byte{[]byte("first")}, Addr: dst},
		{Buffers: [][]byte{[]byte("v6")}, Addr: netip.MustParseAddrPort("[2001:db8::1]:3544")},
		{Buffers: [][]byte{[]byte("third")}, Addr: dst},
	}
	n, err := a.WriteBatch(msgs)
	if n != 1 || !errors.Is(err, udpio.ErrNotIPv4) {
		t.Fatalf("WriteBatch = %d, %v; want 1, ErrNotIPv4", n, err)
	}
	if n, err := a.WriteBatch(msgs[2:]); n != 1 || err != nil {
		t.Fatalf("WriteBatch(rest) = %d, %v", n, err)
	}
	got, _ := readN(t, b, 2, 64)
	if string(got[0]) != "first" || string(got[1]) != "third" {
		t.Errorf("got %q", got)
	}
}

func testDeadline(t *testing.T, pair pairFunc) {
	c, b := pair(t)
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 64)}}}
	// A deadline in the past fails at once.
	b.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := b.ReadBatch(msgs); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: err = %v", err)
	}
	// A future deadline fails when it passes.
	b.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := b.ReadBatch(msgs); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("future deadline: err = %v", err)
	}
	var ne net.Error
	if _, err := b.ReadBatch(msgs); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want a net.Error with Timeout", err)
	}
	// Clearing the deadline makes reads work again.
	b.SetReadDeadline(time.Time{})
	if err := c.WriteTo([]byte("after"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if n, err := b.ReadBatch(msgs); err != nil || string(msgs[0].Buffers[0][:msgs[0].N]) != "after" {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	// Extending a deadline while a read waits moves its expiry.
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	b.SetReadDeadline(time.Now().Add(time.Hour))
	go func() {
		time.Sleep(50 * time.Millisecond)
		c.WriteTo([]byte("late"), b.LocalAddr())
	}()
	if _, err := b.ReadBatch(msgs); err != nil {
		t.Fatalf("extended deadline: %v", err)
	}
}

func testCloseUnblocksRead(t *testing.T, pair pairFunc) {
	_, b := pair(t)
	errc := make(chan error, 1)
	go func() {
		msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 64)}}}
		_, err := b.ReadBatch(msgs)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the reader block
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("ReadBatch after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
	if err := b.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if _, err := b.ReadBatch([]udpio.Message{{Buffers: [][]byte{make([]byte, 1)}}}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch on closed = %v", err)
	}
	if err := b.WriteTo([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteTo on closed = %v", err)
	}
}

func testConcurrentWriters(t *testing.T, pair pairFunc) {
	const writers, batches, perBatch = 4, 50, 8
	a, b := pair(t)
	dst := b.LocalAddr()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			msgs := make([]udpio.Message, perBatch)
			for i := range batches {
				for j := range msgs {
					// Two buffers per datagram so that gather lists of
					// concurrent writers would interleave if unguarded.
					seq := i*perBatch + j
					msgs[j] = udpio.Message{
						Buffers: [][]byte{fmt.Appendf(nil, "w%d:", w), fmt.Appendf(nil, "%04d", seq)},
						Addr:    dst,
					}
				}
				if n, err := a.WriteBatch(msgs); err != nil || n != perBatch {
					errs <- fmt.Errorf("writer %d: WriteBatch = %d, %v", w, n, err)
					return
				}
			}
		})
	}
	got, _ := readN(t, b, writers*batches*perBatch, 64)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := make(map[string]bool)
	next := make([]int, writers)
	for _, d := range got {
		var w, seq int
		if _, err := fmt.Sscanf(string(d), "w%d:%04d", &w, &seq); err != nil || w < 0 || w >= writers {
			t.Fatalf("corrupt datagram %q", d)
		}
		if seen[string(d)] {
			t.Fatalf("duplicate datagram %q", d)
		}
		seen[string(d)] = true
		// Each writer's datagrams keep their order.
		if seq != next[w] {
			t.Fatalf("writer %d: got seq %d, want %d", w, seq, next[w])
		}
		next[w]++
	}
}

// testLongBatch writes more than MaxBatch datagrams in one call.
func testLongBatch(t *testing.T, pair pairFunc) {
	a, b := pair(t)
	const n = udpio.MaxBatch + 100
	msgs := make([]udpio.Message, n)
	for i := range msgs {
		msgs[i] = udpio.Message{Buffers: [][]byte{fmt.Appendf(nil, "%d", i)}, Addr: b.LocalAddr()}
	}
	if k, err := a.WriteBatch(msgs); k != n || err != nil {
		t.Fatalf("WriteBatch = %d, %v", k, err)
	}
	got, _ := readN(t, b, n, 16)
	for i, d := range got {
		if string(d) != fmt.Sprint(i) {
			t.Fatalf("datagram %d = %q", i, d)
		}
	}
}

func TestListenRejectsIPv6(t *testing.T) {
	if c, err := udpio.Listen(netip.MustParseAddrPort("[::1]:0"), plain); !errors.Is(err, udpio.ErrNotIPv4) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Listen([::1]:0) err = %v, want ErrNotIPv4", err)
	}
}

func TestListenZeroAddr(t *testing.T) {
	c, err := udpio.Listen(netip.AddrPort{}, plain)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if la := c.LocalAddr(); !la.Addr().Is4() || !la.Addr().IsUnspecified() || la.Port() == 0 {
		t.Errorf("LocalAddr = %v, want 0.0.0.0:<ephemeral>", la)
	}
}

func ExampleListen() {
	server, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), plain)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer server.Close()
	client, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), plain)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	// One batch of two datagrams, the second gathered from two buffers.
	out := []udpio.Message{
		{Buffers: [][]byte{[]byte("hello")}, Addr: server.LocalAddr()},
		{Buffers: [][]byte{[]byte("wor"), []byte("ld")}, Addr: server.LocalAddr()},
	}
	if _, err := client.WriteBatch(out); err != nil {
		fmt.Println(err)
		return
	}

	in := make([]udpio.Message, 8)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1500)}
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got := 0; got < len(out); {
		n, err := server.ReadBatch(in)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, m := range in[:n] {
			fmt.Printf("%s from client: %v\n", m.Buffers[0][:m.N], m.Addr == client.LocalAddr())
		}
		got += n
	}
	// Output:
	// hello from client: true
	// world from client: true
}
