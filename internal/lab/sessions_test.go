package lab

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// heldSessions opens n SOCKS5 CONNECT sessions through s to port on the
// IPv6-only host and returns teredo-socks's memory with them established and
// idle, its memory before, and how long opening them took. The host's listener
// never accepts: the kernel completes each handshake and keeps the connection in
// an accept queue as long as n, so the far ends cost the test process no file
// descriptors (it may not raise its limit, and it holds the n near ends).
func heldSessions(t testing.TB, v6 *Host, s *socksProc, port uint16, n int) (with, before Memory, took time.Duration) {
	t.Helper()
	if err := v6.sysctl("net.core.somaxconn=" + strconv.Itoa(n+16)); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(V6HostAddr, port)
	var lfd int
	err := inNetns(v6.NS, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		sa := &unix.SockaddrInet6{Port: int(port), Addr: dst.Addr().As16()}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Listen(fd, n+16); err != nil {
			unix.Close(fd)
			return err
		}
		lfd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("lab: listener on %v: %v", dst, err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		unix.Close(lfd)
	}()
	time.Sleep(time.Second) // let the last transfer's buffers go
	if before, err = s.Proc.Memory(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	errc := make(chan error, 1)
	for range 32 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := socksConnect(ctx, s.Host, socksListen, dst)
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	took = time.Since(start)
	select {
	case err := <-errc:
		t.Fatalf("lab: after %d SOCKS sessions: %v", len(conns), err)
	default:
	}
	if len(conns) != n {
		t.Fatalf("lab: %d of %d SOCKS sessions", len(conns), n)
	}
	time.Sleep(2 * time.Second) // idle
	if with, err = s.Proc.Memory(); err != nil {
		t.Fatal(err)
	}
	return with, before, took
}
