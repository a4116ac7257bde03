// Package echotest runs a TCP echo service on loopback for tests: the
// stand-in for a host's local service behind -forward and the like.
package echotest

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
)

// Server echoes every TCP connection on a loopback port until the test
// ends, and reports each client's address on From.
type Server struct {
	netip.AddrPort
	// From receives each accepted client's address, unless nobody reads
	// it and its 16 slots are full.
	From chan netip.AddrPort
}

// StartTCP starts a Server on 127.0.0.1. The test's cleanup closes the
// listener and every connection and waits for the goroutines.
func StartTCP(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{AddrPort: ln.Addr().(*net.TCPAddr).AddrPort(), From: make(chan netip.AddrPort, 16)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case s.From <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return s
}
