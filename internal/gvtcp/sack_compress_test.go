package tcp_test

import (
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/impair"
)

// TestSACKCompression moves 8 MiB over the 50 ms, 0.5 % loss profile between
// two gVisor stacks and checks the receiver's side of loss recovery (see
// sack_compress.go): it must not acknowledge every segment that arrives out
// of order, and the sender must then retransmit about what the path lost.
// Upstream acknowledges each one, so after every loss the sender got one
// ACK per segment for a round trip, fell behind processing them (walking
// its retransmission queue on each), and resent segments whose ACK was
// already queued: 0.8-0.9 ACKs per data segment, 500-2800 retransmissions
// for 30-40 losses, and RTOs. With compression it measured 0.04 ACKs per
// data segment and retransmissions equal to the losses.
func TestSACKCompression(t *testing.T) {
	p, _ := impair.ProfileByName("50ms-0.5%")
	pt := newPath(t, "rate", p, bottleneck{}, 3)
	const n = 8 << 20
	got, ok := pt.upload(t, n, 120*time.Second)
	if got != n || !ok {
		t.Fatalf("received %d of %d bytes, checksum ok %v", got, n, ok)
	}
	fwd, back := pt.wires[0], pt.wires[1]
	fwd.mu.Lock()
	data := fwd.data
	fwd.mu.Unlock()
	back.mu.Lock()
	acks := back.acks
	back.mu.Unlock()
	lost := fwd.line.Stats().Lost + back.line.Stats().Lost
	retx := pt.a.Stats().TCP.Retransmits.Value()
	t.Logf("%d data segments, %d ACKs, %d packets lost, %d retransmitted, %d RTOs", data, acks, lost, retx, pt.a.Stats().TCP.Timeouts.Value())
	if acks > data/4 {
		t.Errorf("receiver sent %d ACKs for %d data segments, want at most one per 4", acks, data)
	}
	// A lost retransmission or a lost ACK costs another; four per loss
	// leaves room for those and still catches resending what arrived.
	if retx > 4*lost+20 {
		t.Errorf("sender retransmitted %d segments for %d packets lost, want at most %d", retx, lost, 4*lost+20)
	}
}
