package socks5

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRelayBuf walks one relay direction through idle, bulk and idle
// again, checking which buffer each Read gets.
func TestRelayBuf(t *testing.T) {
	var pool sync.Pool
	var held atomic.Int64
	rb := &relayBuf{pool: &pool, held: &held}
	steps := []struct {
		name    string
		read    int // bytes the previous Read returned
		wantLen int // len of the buffer for the next Read
	}{
		{"short read stays small", 1, idleBufSize},
		{"empty read stays small", 0, idleBufSize},
		{"full small read borrows", idleBufSize, copyBufSize},
		{"full large read keeps it", copyBufSize, copyBufSize},
		{"short large read returns it", copyBufSize - 1, idleBufSize},
		{"full small read borrows again", idleBufSize, copyBufSize},
		{"EOF on large returns it", 0, idleBufSize},
	}
	for _, st := range steps {
		rb.used(st.read)
		if got := len(rb.next()); got != st.wantLen {
			t.Fatalf("%s: next buffer has %d bytes, want %d", st.name, got, st.wantLen)
		}
		wantHeld := int64(0)
		if st.wantLen == copyBufSize {
			wantHeld = 1
		}
		if got := held.Load(); got != wantHeld {
			t.Fatalf("%s: %d large buffers held, want %d", st.name, got, wantHeld)
		}
	}
	rb.used(idleBufSize)
	rb.release()
	rb.release()
	if got := held.Load(); got != 0 || rb.big != nil {
		t.Fatalf("after release: %d large buffers held, want 0", got)
	}
}

// TestConnectIdleHoldsNoCopyBuffer checks that a session gone idle after
// a bulk transfer waits for data without a large copy buffer.
func TestConnectIdleHoldsNoCopyBuffer(t *testing.T) {
	echo := startEcho(t)
	s := &Server{Dial: loopbackDial(nil)}
	server := startServer(t, s)
	c, err := proxyDial(t, server, echo, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))

	bulk := bytes.Repeat([]byte("teredo "), 64<<10)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(bulk)
		werr <- err
	}()
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bulk) {
		t.Fatal("bulk echo differs")
	}
	// Each pipe updates its buffer after writing what it read, so one
	// echoed byte is not enough: the second one is only read once the
	// pipes have finished with the first, which came alone and short.
	for _, b := range []byte("12") {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != b {
			t.Fatalf("echo of %q = %q, %v", b, one[0], err)
		}
	}
	if n := s.bigBufs.Load(); n != 0 {
		t.Errorf("idle session holds %d large copy buffers, want 0", n)
	}
}
