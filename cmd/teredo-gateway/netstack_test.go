package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/stack"
)

// lineWriter passes what is written to it on as lines.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
		}
		w.buf = w.buf[i+1:]
	}
}

var readyRE = regexp.MustCompile(`^teredo-gateway: ready on \S+, netstack (\S+), \S+ -> (\S+)$`)

// TestNetstackForward runs the command with -netstack on a loopback
// address, without root: a Teredo client of it reaches a TCP service of
// the host at [<prefix6>::1]:80 through -netstack-forward.
func TestNetstackForward(t *testing.T) {
	echo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()

	// A random loopback address, as teredotest does: port 3544 is fixed.
	addr := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(4 * (1 + rand.IntN(62)))})
	out := &lineWriter{lines: make(chan string, 4)}
	var stderr strings.Builder
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"-addr", addr.String(), "-prefix6", "2001:db8:2::/64", "-any-ipv4",
			"-netstack", "-netstack-forward", "80=" + echo.Addr().String()}, noEnv, out, &stderr)
	}()
	defer func() {
		cancel()
		select {
		case code := <-exit:
			if code != 0 {
				t.Errorf("exit %d: %s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("teredo-gateway did not stop")
		}
	}()
	var host netip.Addr
	select {
	case line := <-out.lines:
		m := readyRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("ready line %q", line)
		}
		host = netip.MustParseAddr(m[1])
	case code := <-exit:
		exit <- code
		t.Fatalf("exit %d before ready: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	if host != netip.MustParseAddr("2001:db8:2::1") {
		t.Fatalf("host address %v", host)
	}

	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	s, err := stack.New(cctx, stack.Config{
		Servers:    []netip.Addr{addr},
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: proto.AnyIPv4,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := dialer.New(s).DialContext(cctx, "tcp", netip.AddrPortFrom(host, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte(fmt.Sprintf("hello from %v", s.Addr()))
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q: %v", got, err)
	}
}
