package stack_test

import (
	"errors"
	"net"
	"testing"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
)

// TestUseAfterClose checks that a closed stack refuses new sockets and
// ends existing listeners with net.ErrClosed.
func TestUseAfterClose(t *testing.T) {
	port := startServer(t)
	s := newStack(t, port)
	ln, err := listener.Listen(s, "tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !s.Closed() {
		t.Error("Closed() = false after Close")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept = %v", err)
	}
	for _, network := range []string{"tcp", "udp"} {
		if _, err := dialer.New(s).Dial(network, "[2001::1]:80"); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Dial %s = %v", network, err)
		}
	}
	if _, err := listener.Listen(s, "tcp", ":81"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Listen = %v", err)
	}
	if _, err := listener.ListenPacket(s, "udp", ":81"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ListenPacket = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
