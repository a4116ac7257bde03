package socksd

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// tcpEchoServer echoes on loopback and reports each client's address.
type tcpEchoServer struct {
	netip.AddrPort
	from chan netip.AddrPort
}

func startTCPEcho(t *testing.T) *tcpEchoServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpEchoServer{AddrPort: ln.Addr().(*net.TCPAddr).AddrPort(), from: make(chan netip.AddrPort, 16)}
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
			case s.from <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
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

// ioTimeout bounds each network step of a test.
const ioTimeout = 20 * time.Second
