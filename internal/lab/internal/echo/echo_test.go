package echo

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCheckOverLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, 5*time.Second)
	defer s.Close()
	for _, size := range []int64{0, 1, 100 << 10} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := Check(ctx, c, size, 7)
		cancel()
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if r.Sent != size || r.Received != size {
			t.Fatalf("size %d: %+v", size, r)
		}
	}
	if s.Accepted.Load() != 3 || s.Echoed.Load() != 100<<10+1 {
		t.Fatalf("server counted %d connections, %d bytes", s.Accepted.Load(), s.Echoed.Load())
	}
}

// A peer that alters the stream is caught.
func TestCheckDetectsCorruption(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		if len(b) > 0 {
			b[len(b)/2] ^= 1
		}
		c.Write(b)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Check(ctx, c, 4096, 1); !errors.Is(err, ErrMismatch) {
		t.Fatalf("got %v, want ErrMismatch", err)
	}
	<-done
}

// A silent peer does not hang the check past its context.
func TestCheckBoundedByContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Check(ctx, c, 10, 1); err == nil {
		t.Fatal("check against a silent peer succeeded")
	}
	(<-accepted).Close()
}
