package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/gateway"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var public = netip.MustParsePrefix("2001:db8:2::/64")

// start runs an in-process internet whose only Teredo infrastructure is a
// gateway, and a client stack qualified by it.
func start(t *testing.T, opts ...teredotest.Option) (*teredotest.Internet, *stack.Stack) {
	t.Helper()
	in := teredotest.New(t, append([]teredotest.Option{teredotest.WithGateway(public)}, opts...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return in, s
}

// TestOutbound downloads from an IPv6-only host through the gateway: the
// host sees the client's public address, and the data arrives intact.
func TestOutbound(t *testing.T) {
	in, s := start(t)
	g := in.Gateway()
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	peer := make(chan netip.Addr, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		io.Copy(c, teredotest.Data(size, 7))
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialer.New(s).DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hash := sha256.New()
	if n, err := io.Copy(hash, c); err != nil || n != size {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	if !bytes.Equal(hash.Sum(nil), teredotest.DataSum(size, 7)) {
		t.Fatal("checksum mismatch")
	}
	want, ok := g.PublicAddr(s.Addr())
	if !ok {
		t.Fatalf("no public address for %v", s.Addr())
	}
	if got := <-peer; got != want {
		t.Fatalf("host saw %v, want the public address %v", got, want)
	}
	st := g.Status()
	if st.Stats.TranslatedOut == 0 || st.Stats.TranslatedIn == 0 || st.Server.Stats.AnsweredRS == 0 {
		t.Fatalf("status %+v", st.Stats)
	}
	t.Logf("client %v appears as %v; gateway stats %+v", s.Addr(), want, st.Stats)
}

// TestInbound connects from the IPv6-only host to a listener of the client
// at its public address: the gateway maps the address back and reaches the
// client through its in-process indirect bubble.
func TestInbound(t *testing.T) {
	in, s := start(t)
	g := in.Gateway()
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := listener.Listen(s, "tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("hello from " + c.LocalAddr().String()))
	}()
	pub, _ := g.PublicAddr(s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.DialTCP(ctx, netip.AddrPortFrom(pub, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(b, []byte("hello from ")) {
		t.Fatalf("read %q: %v", b, err)
	}
	if st := g.Stats(); st.LocalBubbles == 0 {
		t.Fatalf("no in-process bubble: %+v", st)
	}
}

// TestUnreachable sends to a public address whose client does not
// answer: the relay's bubbles go unanswered and the host receives an
// ICMPv6 "address unreachable" with a valid checksum, from and about the
// public address.
func TestUnreachable(t *testing.T) {
	in, _ := start(t, teredotest.WithRelayConfig(func(c *relay.Config) {
		c.Bubble = peer.Limit{Interval: 50 * time.Millisecond, Max: peer.DefaultBubbleLimit.Max, Window: peer.DefaultBubbleLimit.Window}
		c.ICMPInterval = time.Millisecond
	}))
	g := in.Gateway()
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	// A client of the gateway mapped at 127.0.0.1:1, where nobody listens.
	teredo := g.TeredoPrefix().Addr().As16()
	copy(teredo[8:], []byte{0x80, 0, 0xff, 0xfe, 0x80, 0xff, 0xff, 0xfe})
	pub, ok := g.PublicAddr(netip.AddrFrom16(teredo))
	if !ok {
		t.Fatal("no public address")
	}
	c, err := h.DialUDP(netip.AddrPortFrom(pub, 9))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("anyone?"))
	icmp := in.Stack().Stats().ICMP.V6.PacketsReceived.DstUnreachable
	for i := 0; icmp.Value() == 0; i++ {
		if i == 200 {
			t.Fatalf("no ICMPv6 error reached the host; gateway %+v, relay %v", g.Stats(), g.Status().Relay.Counters)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := g.Stats(); st.TranslatedOut != 1 || st.ForeignSource != 0 || st.Malformed != 0 {
		t.Fatalf("gateway %+v", st)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []gateway.Config{
		{},
		{Addr: netip.MustParseAddr("2001:db8::1")},
		{Addr: netip.MustParseAddr("198.18.0.1")},
	} {
		if _, err := gateway.New(cfg); !errors.Is(err, gateway.ErrConfig) {
			t.Errorf("New(%+v): %v, want ErrConfig", cfg, err)
		}
	}
}

func TestMayBeClient(t *testing.T) {
	in, s := start(t)
	g := in.Gateway()
	pub, _ := g.PublicAddr(s.Addr())
	for _, tt := range []struct {
		a    netip.Addr
		want bool
	}{
		{pub, true},
		{netip.MustParseAddr("2001:db8:2::1"), false}, // a router's or the host's own
		{netip.MustParseAddr("2001:db8:3::1"), false}, // another prefix
		{s.Addr(), false}, // the Teredo address itself
	} {
		if got := g.MayBeClient(tt.a); got != tt.want {
			t.Errorf("MayBeClient(%v) = %v, want %v", tt.a, got, tt.want)
		}
	}
}

// TestClientToClient connects two clients of the gateway by their Teredo
// addresses: their bubbles go through the server half of the shared
// socket.
func TestClientToClient(t *testing.T) {
	in, a := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := listener.Listen(a, "tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := dialer.New(b).DialContext(ctx, "tcp", netip.AddrPortFrom(a.Addr(), 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("between two clients of one gateway")
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q: %v", got, err)
	}
	// The clients' indirect bubbles go through the server half; on
	// loopback their direct bubbles may win the race, so the count can
	// lag behind the connection.
	for i := 0; in.Gateway().Status().Server.Stats.ForwardedTeredo == 0; i++ {
		if i == 200 {
			t.Fatalf("no bubble went through the server: %+v", in.Gateway().Status().Server.Stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
