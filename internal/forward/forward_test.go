package forward

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/echotest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ioTimeout = 20 * time.Second

// TestForwarder runs a Forwarder on a loopback listener (standing in for
// the Teredo address) and checks relaying, an unreachable target, and that
// Close cuts what is in flight.
func TestForwarder(t *testing.T) {
	var d net.Dialer
	log := slog.New(slog.DiscardHandler)
	listen := func() net.Listener {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}

	t.Run("relays and closes", func(t *testing.T) {
		echo := echotest.StartTCP(t)
		ln := listen()
		f := New(ln, echo.String(), d.DialContext, log)
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		c.Write([]byte("hello"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("%q %v", buf, err)
		}
		done := make(chan struct{})
		go func() { f.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Close hangs with a connection in flight")
		}
		if _, err := c.Read(buf); err == nil {
			t.Fatal("relayed connection survived Close")
		}
		if _, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			t.Fatal("still accepting after Close")
		}
	})

	t.Run("target down", func(t *testing.T) {
		dead := listen()
		target := dead.Addr().String()
		dead.Close()
		ln := listen()
		f := New(ln, target, d.DialContext, log)
		defer f.Close()
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read %v, want EOF once the target refuses", err)
		}
	})
}
