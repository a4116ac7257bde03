package relay

import (
	"bytes"
	"testing"
)

// TestTransmit injects a packet as the gateway's hairpin does: it is
// queued behind an indirect bubble, the caller's buffer is not retained,
// and the client's answering bubble releases the packet as it was.
func TestTransmit(t *testing.T) {
	h := newHarness(t, nil)
	peerAddr := teredoAddr(serverIP, clientMap)
	pkt := udpPacket(native, peerAddr, []byte("hairpinned"))
	want := bytes.Clone(pkt)
	h.r.Transmit(pkt)
	clear(pkt) // the caller reuses its buffer
	bub := recv(t, h.server)
	if len(bub) != 1 || h.r.Counter(TxQueued) != 1 {
		t.Fatalf("indirect bubbles %d, queued %d; want 1 and 1", len(bub), h.r.Counter(TxQueued))
	}
	if n := len(recv(t, h.client)); n != 0 {
		t.Fatalf("%d datagrams to the client before its bubble", n)
	}
	h.receive(bubbleAnswer(peerAddr, bub[0].Buffers[0]), clientMap)
	got := recv(t, h.client)
	if len(got) != 1 || !bytes.Equal(got[0].Buffers[0], want) {
		t.Fatalf("client received %d datagrams, want the packet as injected", len(got))
	}
}
