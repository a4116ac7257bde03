package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/internal/echo"
)

// ourSocksDir is the project's SOCKS5 command, relative to the module root.
const ourSocksDir = "cmd/teredo-socks"

// socksListen is where teredo-socks takes SOCKS5 inside its client namespace.
const socksListen = "127.0.0.1:1080"

var (
	socksStartRE = regexp.MustCompile(`teredo-socks: qualifying with`)
	socksReadyRE = regexp.MustCompile(`teredo-socks: qualified as (\S+) via .*; SOCKS5 on (\S+)`)
)

// socksProc is teredo-socks running in a client namespace.
type socksProc struct {
	Proc *Proc
	Host *Host
	Addr netip.Addr // the Teredo address
	// Qualified is the time from starting the process to its "qualified" line,
	// Started to its first line, "qualifying with" (after it took its ports).
	Qualified, Started time.Duration
}

// requireOurSocks skips while the project's SOCKS5 command does not exist.
func requireOurSocks(t testing.TB) {
	t.Helper()
	requireFile(t, ourSocksDir)
}

// startSocks runs teredo-socks on h against the server at primary (its secondary is
// primary + 1), SOCKS5 on socksListen, and waits until it is qualified.
func startSocks(t testing.TB, h *Host, primary netip.Addr, extra ...string) *socksProc {
	t.Helper()
	bin := BuildCommand(t, "./"+ourSocksDir)
	args := append([]string{"-server", primary.String(), "-listen", socksListen}, extra...)
	if h.NAT != nil && h.NAT.Kind == FullCone {
		args = append(args, "-bind", fmt.Sprintf("0.0.0.0:%d", h.NAT.ConePort))
	}
	s := &socksProc{Host: h}
	start := time.Now()
	s.Proc = h.Start(t, bin, args...)
	if _, err := s.Proc.WaitLine(socksStartRE, 10*time.Second); err != nil {
		t.Fatalf("teredo-socks on %s: %v", h.Name, err)
	}
	s.Started = time.Since(start)
	m, err := s.Proc.WaitLine(socksReadyRE, DefaultQualifyTimeout)
	if err != nil {
		t.Fatalf("teredo-socks on %s: %v", h.Name, err)
	}
	s.Qualified = time.Since(start)
	if s.Addr, err = netip.ParseAddr(m[1]); err != nil {
		t.Fatalf("teredo-socks on %s: qualified line %q: %v", h.Name, m[0], err)
	}
	if m[2] != socksListen {
		t.Fatalf("teredo-socks on %s: SOCKS5 on %s, want %s", h.Name, m[2], socksListen)
	}
	return s
}

// routeVia makes the IPv6-only host send to the client's Teredo address through the
// relay at relayV6, so that each client of a test has its own relay.
func routeVia(t testing.TB, v6 *Host, client netip.Addr, relayV6 netip.Addr) {
	t.Helper()
	if err := v6.RouteVia(netip.PrefixFrom(client, 128), relayV6); err != nil {
		t.Fatal(err)
	}
}

// secondRelayV4 and secondRelayV6 are the addresses of the extra relay host that
// runs a Miredo relay next to the project's relay on Lab.Relay.
var (
	secondRelayV4 = netip.MustParseAddr("198.18.0.5")
	secondRelayV6 = netip.MustParseAddr("2001:db8:1::5")
)

// startSecondMiredoRelay adds a relay host beside the lab's own and runs a Miredo
// relay on it.
func startSecondMiredoRelay(t testing.TB, l *Lab) *MiredoRelay {
	t.Helper()
	h, err := l.AddInternetHost("rly2", []netip.Addr{secondRelayV4}, []netip.Addr{secondRelayV6})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.EnableForwarding(); err != nil {
		t.Fatal(err)
	}
	return StartMiredoRelay(t, h, MiredoRelayOptions{})
}

// TestTeredoSocks runs the project's SOCKS5 proxy behind home routers with the
// project's server: curl downloads 50 MB through it from the IPv6-only host, once
// through the project's relay and once through a Miredo relay; a UDP ASSOCIATE round
// trip reaches a UDP echo service on the IPv6-only host; and the IPv6-only host
// reaches a local service in the client's namespace through -forward.
func TestTeredoSocks(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	requireOurRelay(t)
	Require(t, "curl", "miredo")
	const size = 50 << 20
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}})
	srv := impl.start(t, l)
	ours := startOurRelay(t, l.Relay)
	theirs := startSecondMiredoRelay(t, l)
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), size)

	// The forwarded service: a TCP echo on the client's loopback.
	local, err := l.Clients["a1"].Listen("tcp4", "127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	es := echo.Serve(local, 20*time.Second)
	t.Cleanup(func() { es.Close() })
	s1 := startSocks(t, l.Clients["a1"], srv.Primary, "-forward", "8000=127.0.0.1:9000")
	s2 := startSocks(t, l.Clients["a2"], srv.Primary)
	routeVia(t, l.V6Host, s1.Addr, RelayV6)
	routeVia(t, l.V6Host, s2.Addr, secondRelayV6)
	t.Logf("teredo-socks qualified in %v (a1, %v) and %v (a2, %v)", s1.Qualified.Round(time.Millisecond), s1.Addr, s2.Qualified.Round(time.Millisecond), s2.Addr)

	curlSocks := func(t *testing.T, s *socksProc) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		got, err := s.Host.Curl(ctx, f.URL, "--socks5-hostname", socksListen)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(got); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		t.Logf("%s: %d bytes in %v (%.1f MB/s)", s.Host.Name, got.Size, took.Round(time.Millisecond), float64(got.Size)/took.Seconds()/1e6)
	}
	t.Run("download-our-relay", func(t *testing.T) {
		st0 := ours.status(t)
		curlSocks(t, s1)
		st := ours.status(t)
		if st.Counters["tx_forwarded"]-st0.Counters["tx_forwarded"] < size/1280 {
			t.Errorf("the download did not go through our relay: %v", st)
		}
		// The host's TCP sends super-packets that the kernel forwards into
		// the TUN device whole (TSO6 on reads); the relay splits them.
		if n := st.Device["read_segments"] - st0.Device["read_segments"]; n < size/1280/2 {
			t.Errorf("only %d of the download's packets were read as parts of super-packets: device %v", n, st.Device)
		}
	})
	t.Run("upload-our-relay", func(t *testing.T) {
		up := l.V6Host.ServeUpload(t, netip.AddrPortFrom(V6HostAddr, 8081))
		file := filepath.Join(t.TempDir(), "upload.bin")
		want, err := WriteFile(file, size)
		if err != nil {
			t.Fatal(err)
		}
		st0 := ours.status(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		got, err := s1.Host.CurlUpload(ctx, up.URL, file, "--socks5-hostname", socksListen)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("the server received %d bytes sha256 %s, want %d bytes sha256 %s", got.Size, got.SHA256, want.Size, want.SHA256)
		}
		took := time.Since(start)
		st := ours.status(t)
		t.Logf("upload: %d bytes in %v (%.1f MB/s); device %v", got.Size, took.Round(time.Millisecond), float64(got.Size)/took.Seconds()/1e6, st.Device)
		// The client's segments of one read batch reach the host as one
		// GSO write (TUN write offload).
		if n := st.Device["coalesced"] - st0.Device["coalesced"]; n < size/1280/2 {
			t.Errorf("only %d of the upload's packets were written as parts of super-segments: device %v", n, st.Device)
		}
	})
	t.Run("download-miredo-relay", func(t *testing.T) {
		ctx, cancel := contextWithTimeout()
		defer cancel()
		before, err := theirs.Host.UDPStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		oursBefore := ours.status(t).Counters["tx_forwarded"]
		curlSocks(t, s2)
		after, err := theirs.Host.UDPStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sent := after.OutDatagrams - before.OutDatagrams; sent < size/1280 {
			t.Errorf("the Miredo relay sent %d datagrams during the download, want at least %d", sent, size/1280)
		}
		if n := ours.status(t).Counters["tx_forwarded"] - oursBefore; n > 100 {
			t.Errorf("our relay forwarded %d packets of the download meant for the Miredo relay", n)
		}
	})
	t.Run("udp-associate", func(t *testing.T) {
		echoAddr := netip.AddrPortFrom(V6HostAddr, 7007)
		serveUDPEcho(t, l.V6Host, echoAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, err := socksAssociate(ctx, s1.Host, socksListen)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		for _, n := range []int{1, 100, 1200} {
			payload := bytes.Repeat([]byte{byte(n)}, n)
			from, got, err := a.roundTrip(ctx, echoAddr, payload)
			if err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
			if from != echoAddr || !bytes.Equal(got, payload) {
				t.Fatalf("%d bytes to %v: got %d bytes from %v", n, echoAddr, len(got), from)
			}
		}
		t.Logf("UDP ASSOCIATE through %v: 1, 100 and 1200 bytes echoed by %v", a.relay, echoAddr)
	})
	t.Run("forward", func(t *testing.T) {
		dst := netip.AddrPortFrom(s1.Addr, 8000)
		r, err := echoFrom(l.V6Host, 40*time.Second, dst, 1<<20)
		if err != nil {
			t.Fatalf("IPv6-only host → %v: %v", dst, err)
		}
		if es.Accepted.Load() != 1 {
			t.Errorf("the local service accepted %d connections, want 1", es.Accepted.Load())
		}
		t.Logf("IPv6-only host → [%v]:8000 → a1 127.0.0.1:9000: %d bytes echoed in %d ms", s1.Addr, r.Received, r.Milliseconds)
	})
}

// serveUDPEcho echoes UDP datagrams on addr in h's namespace until the test ends.
func serveUDPEcho(t testing.TB, h *Host, addr netip.AddrPort) {
	t.Helper()
	pc, err := h.ListenPacket("udp6", addr.String())
	if err != nil {
		t.Fatalf("UDP echo on %s: %v", h.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

// The least of a SOCKS5 client (RFC 1928) that the lab needs, run from inside a
// client namespace: CONNECT and UDP ASSOCIATE, no authentication.

// appendSOCKSAddr appends ATYP, address and port.
func appendSOCKSAddr(b []byte, a netip.AddrPort) []byte {
	if a.Addr().Is4() {
		b = append(b, 1)
	} else {
		b = append(b, 4)
	}
	b = append(b, a.Addr().AsSlice()...)
	return binary.BigEndian.AppendUint16(b, a.Port())
}

// readSOCKSAddr reads ATYP, an IPv4 or IPv6 address and port.
func readSOCKSAddr(r io.Reader) (netip.AddrPort, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return netip.AddrPort{}, err
	}
	n := 4
	switch atyp[0] {
	case 1:
	case 4:
		n = 16
	default:
		return netip.AddrPort{}, fmt.Errorf("socks: address type %d", atyp[0])
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(r, b); err != nil {
		return netip.AddrPort{}, err
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), nil
}

// socksRequest connects to proxy from h, sends one request and returns the control
// connection and the bound address of a successful reply.
func socksRequest(ctx context.Context, h *Host, proxy string, cmd byte, dst netip.AddrPort) (net.Conn, netip.AddrPort, error) {
	c, err := h.DialContext(ctx, "tcp4", proxy)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	fail := func(err error) (net.Conn, netip.AddrPort, error) {
		c.Close()
		return nil, netip.AddrPort{}, fmt.Errorf("socks %d to %v: %w", cmd, dst, err)
	}
	// Greeting and request in one write: the server reads them in turn.
	if _, err := c.Write(appendSOCKSAddr([]byte{5, 1, 0, 5, cmd, 0}, dst)); err != nil {
		return fail(err)
	}
	var head [5]byte // greeting answer, then VER REP RSV
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return fail(err)
	}
	if head[0] != 5 || head[1] != 0 || head[2] != 5 {
		return fail(fmt.Errorf("bad answer % x", head))
	}
	if head[3] != 0 {
		return fail(fmt.Errorf("reply code %d", head[3]))
	}
	bound, err := readSOCKSAddr(c)
	if err != nil {
		return fail(err)
	}
	c.SetDeadline(time.Time{})
	return c, bound, nil
}

// socksConnect opens a CONNECT stream to dst through proxy, from h.
func socksConnect(ctx context.Context, h *Host, proxy string, dst netip.AddrPort) (net.Conn, error) {
	c, _, err := socksRequest(ctx, h, proxy, 1, dst)
	return c, err
}

// udpAssociation is a client's side of UDP ASSOCIATE.
type udpAssociation struct {
	ctl   net.Conn
	conn  *net.UDPConn
	relay netip.AddrPort
}

// socksAssociate opens a UDP association through proxy from h's namespace.
func socksAssociate(ctx context.Context, h *Host, proxy string) (*udpAssociation, error) {
	conn, err := h.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		return nil, err
	}
	ctl, relay, err := socksRequest(ctx, h, proxy, 3, conn.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		conn.Close()
		return nil, err
	}
	if relay.Addr().IsUnspecified() {
		relay = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), relay.Port())
	}
	return &udpAssociation{ctl: ctl, conn: conn, relay: relay}, nil
}

func (a *udpAssociation) Close() error {
	return errors.Join(a.ctl.Close(), a.conn.Close())
}

// roundTrip sends payload to dst through the association and returns the first
// datagram that comes back, resending every 2 s (the first datagrams to a new
// destination may wait for Teredo's relay discovery, and UDP may be lost).
func (a *udpAssociation) roundTrip(ctx context.Context, dst netip.AddrPort, payload []byte) (netip.AddrPort, []byte, error) {
	msg := append(appendSOCKSAddr([]byte{0, 0, 0}, dst), payload...)
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		if _, err := a.conn.WriteToUDPAddrPort(msg, a.relay); err != nil {
			return netip.AddrPort{}, nil, err
		}
		a.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := a.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, net.ErrClosed) {
			return netip.AddrPort{}, nil, err
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		r := bytes.NewReader(buf[:n])
		var hdr [3]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil || hdr != [3]byte{} {
			return netip.AddrPort{}, nil, fmt.Errorf("socks: bad UDP header % x", buf[:min(n, 3)])
		}
		from, err := readSOCKSAddr(r)
		if err != nil {
			return netip.AddrPort{}, nil, fmt.Errorf("socks: UDP header: %w", err)
		}
		return from, buf[n-r.Len() : n], nil
	}
	return netip.AddrPort{}, nil, ctx.Err()
}
