package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// loopbackBase returns a random 127.x.y.0 so that parallel test binaries
// do not collide on port 3544.
func loopbackBase() [4]byte {
	return [4]byte{127, byte(rand.IntN(200) + 20), byte(rand.IntN(250) + 1), 0}
}

func addrIn(base [4]byte, host byte) netip.Addr {
	base[3] = host
	return netip.AddrFrom4(base)
}

// startServer runs a server on loopback and returns it with the base of its
// addresses; Serve ends with the test.
func startServer(t *testing.T, mod func(*Config)) (*Server, [4]byte) {
	t.Helper()
	var (
		s    *Server
		base [4]byte
		err  error
	)
	for range 5 { // a random address pair may, rarely, be taken
		base = loopbackBase()
		cfg := Config{Primary: addrIn(base, 1), IPv4Filter: proto.AnyIPv4}
		if mod != nil {
			mod(&cfg)
		}
		if s, err = New(cfg); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, base
}

// testClient is a fake Teredo client: a plain UDP socket on loopback.
type testClient struct {
	t    *testing.T
	conn *net.UDPConn
	addr netip.AddrPort
}

func newTestClient(t *testing.T, ip netip.Addr) *testClient {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &testClient{t: t, conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
}

func (c *testClient) send(b []byte, to netip.AddrPort) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(b, to); err != nil {
		c.t.Fatal(err)
	}
}

func (c *testClient) recv() ([]byte, netip.AddrPort) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		c.t.Fatal(err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

func TestLoopbackRSRA(t *testing.T) {
	s, base := startServer(t, nil)
	primary, secondary := s.Addrs()
	c := newTestClient(t, addrIn(base, 10))
	for _, tt := range []struct {
		name     string
		to       netip.AddrPort
		cone     bool
		wantFrom netip.AddrPort
	}{
		{"restricted to primary", primary, false, primary},
		{"restricted to secondary", secondary, false, secondary},
		{"cone to primary", primary, true, secondary},
		{"cone to secondary", secondary, true, primary},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := [8]byte{1, 2, 3, 4, 5, 6, 7, byte(rand.IntN(256))}
			c.send(proto.AppendRS(nil, n, tt.cone), tt.to)
			b, from := c.recv()
			if from != tt.wantFrom {
				t.Fatalf("RA from %v, want %v", from, tt.wantFrom)
			}
			var pkt proto.Packet
			if err := pkt.Parse(b); err != nil {
				t.Fatal(err)
			}
			ra, err := proto.ParseRA(&pkt)
			if err != nil {
				t.Fatal(err)
			}
			wantDst := proto.RSSourceRestricted
			if tt.cone {
				wantDst = proto.RSSourceCone
			}
			if ra.Nonce != n || ra.Mapped != c.addr || ra.Server != primary.Addr() || ra.MTU != 1280 || ra.Dst != wantDst {
				t.Fatalf("RA %+v; client %v", ra, c.addr)
			}
		})
	}
	if st := s.Stats(); st.AnsweredRS != 4 || st.Received != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLoopbackIndirectBubbles(t *testing.T) {
	s, base := startServer(t, nil)
	primary, _ := s.Addrs()
	a := newTestClient(t, addrIn(base, 10))
	b := newTestClient(t, addrIn(base, 11))
	teredo := func(c *testClient) netip.Addr {
		return proto.Address{Server: primary.Addr(), Flags: 0x0123, Mapped: c.addr}.Addr()
	}
	exchange := func(from, to *testClient) {
		t.Helper()
		want := proto.AppendBubble(nil, teredo(from), teredo(to), 0)
		from.send(want, primary)
		got, src := to.recv()
		if src != primary {
			t.Fatalf("bubble from %v, want the primary %v", src, primary)
		}
		var pkt proto.Packet
		if err := pkt.Parse(got); err != nil {
			t.Fatal(err)
		}
		if !pkt.HasOrigin || pkt.Origin != from.addr || pkt.HasAuth || !bytes.Equal(pkt.IPv6, want) {
			t.Fatalf("got %+v, want origin %v and %x", pkt, from.addr, want)
		}
	}
	exchange(a, b)
	exchange(b, a)
	if st := s.Stats(); st.ForwardedTeredo != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLoopbackLoopGuard points a bubble at the server's own socket: the
// server forwards it once to itself and drops it on arrival.
func TestLoopbackLoopGuard(t *testing.T) {
	s, base := startServer(t, nil)
	primary, _ := s.Addrs()
	a := newTestClient(t, addrIn(base, 10))
	self := proto.Address{Server: primary.Addr(), Mapped: primary}.Addr()
	src := proto.Address{Server: primary.Addr(), Mapped: a.addr}.Addr()
	a.send(proto.AppendBubble(nil, src, self, 0), primary)
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Drops[DropLoop] == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); st.Drops[DropLoop] != 1 || st.ForwardedTeredo != 1 || st.Received != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHandler(t *testing.T) {
	s, base := startServer(t, nil)
	primary, _ := s.Addrs()
	c := newTestClient(t, addrIn(base, 10))
	c.send(proto.AppendRS(nil, nonce, false), primary)
	c.recv()
	c.send([]byte("junk"), primary)
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Dropped == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}

	h := s.Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/status: %d %v", rec.Code, rec.Header())
	}
	var got struct {
		Primary string
		Stats   struct {
			Received   uint64
			AnsweredRS uint64 `json:"answered_rs"`
			Drops      map[string]uint64
		}
		IPv6Output bool `json:"ipv6_output"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Primary != primary.String() || got.Stats.Received != 2 || got.Stats.AnsweredRS != 1 ||
		got.Stats.Drops["malformed"] != 1 || len(got.Stats.Drops) != int(NumDropReasons)-1 || got.IPv6Output {
		t.Fatalf("/status: %s", rec.Body)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		"# TYPE teredo_server_received_total counter\nteredo_server_received_total 2\n",
		"teredo_server_answered_rs_total 1\n",
		`teredo_server_dropped_total{reason="malformed"} 1` + "\n",
		`teredo_server_dropped_total{reason="loop"} 0` + "\n",
		"# TYPE teredo_server_rate_limit_sources gauge\nteredo_server_rate_limit_sources 1\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/status", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /status: %d", rec.Code)
	}
}

func TestServeLifecycle(t *testing.T) {
	base := loopbackBase()
	s, err := New(Config{Primary: addrIn(base, 1), IPv4Filter: proto.AnyIPv4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	time.Sleep(10 * time.Millisecond)
	if err := s.Serve(ctx); !errors.Is(err, ErrServing) && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Serve: %v", err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if err := s.Serve(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// Close without Serve releases the sockets.
	s, err = New(Config{Primary: addrIn(base, 1), IPv4Filter: proto.AnyIPv4})
	if err != nil {
		t.Fatalf("addresses not released: %v", err)
	}
	s.Close()
}

func TestNewListenError(t *testing.T) {
	base := loopbackBase()
	taken, err := udpio.Listen(netip.AddrPortFrom(addrIn(base, 2), proto.Port), udpio.Options{DisableGSO: true, DisableGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if _, err := New(Config{Primary: addrIn(base, 1), IPv4Filter: proto.AnyIPv4}); err == nil {
		t.Fatal("New succeeded with the secondary address taken")
	}
	// The primary socket was closed on the way out.
	s, err := New(Config{Primary: addrIn(base, 1), Secondary: addrIn(base, 3), IPv4Filter: proto.AnyIPv4})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestInMemoryNetwork runs the server on udpiotest's network, as teredotest
// does, with an IPv6 output that answers echo requests.
func TestInMemoryNetwork(t *testing.T) {
	network := udpiotest.NewNetwork()
	primary := netip.MustParseAddr("198.18.0.1")
	native := make(chan []byte, 1)
	out := IPv6OutputFunc(func(pkt []byte) error {
		select {
		case native <- bytes.Clone(pkt):
			return nil
		default:
			return errors.New("output full")
		}
	})
	s, err := New(Config{Primary: primary, Listen: network.Listen, IPv6Output: out})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	defer func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	client, err := network.Listen(netip.MustParseAddrPort("203.0.113.5:40000"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	p, _ := s.Addrs()
	if err := client.WriteTo(proto.AppendRS(nil, nonce, false), p); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	if _, err := client.ReadBatch(msgs); err != nil {
		t.Fatal(err)
	}
	var pkt proto.Packet
	if err := pkt.Parse(msgs[0].Buffers[0][:msgs[0].N]); err != nil {
		t.Fatal(err)
	}
	ra, err := proto.ParseRA(&pkt)
	if err != nil || ra.Mapped != client.LocalAddr() || msgs[0].Addr != p {
		t.Fatalf("RA %+v from %v: %v", ra, msgs[0].Addr, err)
	}
	if st := s.Status(); !st.IPv6Output {
		t.Fatal("status does not report the IPv6 output")
	}

	// The relay-discovery echo request leaves through the IPv6 output.
	self := proto.Address{Server: primary, Mapped: client.LocalAddr()}.Addr()
	ping := echo(self, netip.MustParseAddr("2001:db8::80"), proto.ICMPEchoRequest, 22)
	if err := client.WriteTo(ping, p); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-native:
		if !bytes.Equal(got, ping) {
			t.Fatalf("IPv6 output got %x, want %x", got, ping)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no echo request on the IPv6 output; stats %+v", s.Stats())
	}
}

// TestManyClients pushes more datagrams than one batch through the socket
// adapter and checks that every client gets its RA.
func TestManyClients(t *testing.T) {
	network := udpiotest.NewNetwork()
	s, err := New(Config{Primary: netip.MustParseAddr("198.18.0.1"), Listen: network.Listen})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	defer func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	primary, secondary := s.Addrs()
	const n = 5 * batchSize
	clients := make([]udpio.Conn, n)
	for i := range clients {
		c, err := network.Listen(netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i / 250), byte(i%250 + 1)}), 40000))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
		to := primary
		if i%3 == 0 {
			to = secondary
		}
		if err := c.WriteTo(proto.AppendRS(nil, [8]byte{byte(i)}, i%2 == 0), to); err != nil {
			t.Fatal(err)
		}
	}
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.ReadBatch(msgs); err != nil {
			t.Fatalf("client %d: %v; stats %+v", i, err, s.Stats())
		}
		var pkt proto.Packet
		if err := pkt.Parse(msgs[0].Buffers[0][:msgs[0].N]); err != nil {
			t.Fatal(err)
		}
		ra, err := proto.ParseRA(&pkt)
		if err != nil || ra.Nonce != [8]byte{byte(i)} || ra.Mapped != c.LocalAddr() {
			t.Fatalf("client %d: RA %+v, %v", i, ra, err)
		}
		wantFrom := primary
		if (i%3 == 0) != (i%2 == 0) { // secondary xor cone
			wantFrom = secondary
		}
		if msgs[0].Addr != wantFrom {
			t.Fatalf("client %d: RA from %v, want %v", i, msgs[0].Addr, wantFrom)
		}
	}
	if st := s.Stats(); st.AnsweredRS != n || st.SendErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}
