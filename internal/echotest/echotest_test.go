package echotest

import (
	"io"
	"net"
	"testing"
	"time"
)

func TestStartTCP(t *testing.T) {
	s := StartTCP(t)
	c, err := net.Dial("tcp4", s.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echoed %q, %v", got, err)
	}
	if from := <-s.From; from != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Errorf("From %v, want %v", from, c.LocalAddr())
	}
}
