package stack

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"golang.org/x/net/ipv4"

	"github.com/teredo-go/teredo/proto"
)

func TestSuitableLinks(t *testing.T) {
	v4 := []netip.Addr{netip.MustParseAddr("192.168.1.2")}
	up := net.FlagUp | net.FlagMulticast
	all := []discoveryLink{
		{Index: 1, Name: "lo", Flags: up | net.FlagLoopback, IPv4: []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
		{Index: 2, Name: "eth0", Flags: up, IPv4: v4},
		{Index: 3, Name: "down0", Flags: net.FlagMulticast, IPv4: v4},
		{Index: 4, Name: "tun0", Flags: net.FlagUp | net.FlagPointToPoint, IPv4: v4},
		{Index: 5, Name: "noaddr0", Flags: up},
		{Index: 6, Name: "wlan0", Flags: up | net.FlagBroadcast | net.FlagRunning, IPv4: v4},
	}
	var got []string
	for _, l := range suitableLinks(all) {
		got = append(got, l.Name)
	}
	if want := []string{"eth0", "wlan0"}; !slices.Equal(got, want) {
		t.Errorf("suitable %v, want %v", got, want)
	}
	if l := suitableLinks(nil); len(l) != 0 {
		t.Errorf("suitable links of none: %v", l)
	}
}

// recordingConn is the service socket's plain path: it records the
// datagrams sent without choosing an interface.
type recordingConn struct {
	mu  sync.Mutex
	got []netip.AddrPort
	err error
}

func (c *recordingConn) WriteTo(_ []byte, to netip.AddrPort) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, to)
	return c.err
}

// fakeHost is an interface list that tests change between bubbles, and
// records what was sent on which interface and which memberships local
// discovery asked for.
type fakeHost struct {
	links   []discoveryLink
	listErr error
	failOn  map[int]bool // sends on these interface indexes fail
	sentOn  []int
	follows [][]string
}

func (h *fakeHost) list() ([]discoveryLink, error) { return slices.Clone(h.links), h.listErr }

func (h *fakeHost) send(_ []byte, to netip.AddrPort, ifindex int) error {
	if to != netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port) {
		return fmt.Errorf("sent to %v", to)
	}
	if h.failOn[ifindex] {
		return errors.New("network is unreachable")
	}
	h.sentOn = append(h.sentOn, ifindex)
	return nil
}

func (h *fakeHost) follow(links []discoveryLink) {
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	h.follows = append(h.follows, names)
}

func TestDiscoveryTransport(t *testing.T) {
	group := netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port)
	server := netip.MustParseAddrPort("192.0.2.1:3544")
	v4 := []netip.Addr{netip.MustParseAddr("10.0.0.2")}
	up := net.FlagUp | net.FlagMulticast
	eth0 := discoveryLink{Index: 2, Name: "eth0", Flags: up, IPv4: v4}
	wlan0 := discoveryLink{Index: 3, Name: "wlan0", Flags: up, IPv4: v4}
	br0 := discoveryLink{Index: 7, Name: "br0", Flags: up, IPv4: v4}
	lo := discoveryLink{Index: 1, Name: "lo", Flags: up | net.FlagLoopback, IPv4: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}

	h := &fakeHost{links: []discoveryLink{lo, eth0, wlan0}}
	conn := &recordingConn{}
	tr := &discoveryTransport{conn: conn, links: h.list, sendOn: h.send, log: slog.New(slog.DiscardHandler)}
	follow := h.follow
	tr.follow.Store(&follow)

	// Anything but a discovery bubble goes straight through.
	if err := tr.WriteTo([]byte("rs"), server); err != nil {
		t.Fatal(err)
	}
	if len(conn.got) != 1 || conn.got[0] != server || len(h.sentOn) != 0 || len(h.follows) != 0 {
		t.Fatalf("unicast: plain %v, per interface %v, follows %v", conn.got, h.sentOn, h.follows)
	}

	// A discovery bubble goes out on each suitable interface, after the
	// memberships follow them.
	if err := tr.WriteTo([]byte("bubble"), group); err != nil {
		t.Fatal(err)
	}
	if want := []int{2, 3}; !slices.Equal(h.sentOn, want) {
		t.Errorf("sent on %v, want %v", h.sentOn, want)
	}
	if st := tr.stats(); st.Sent != 2 || st.SendErrors != 0 || !slices.Equal(st.Interfaces, []string{"eth0", "wlan0"}) {
		t.Errorf("stats %+v", st)
	}

	// Interfaces come and go: the next bubble sees the new list; an
	// interface whose send fails does not stop the others.
	h.links = []discoveryLink{lo, wlan0, br0}
	h.sentOn = nil
	h.failOn = map[int]bool{3: true}
	if err := tr.WriteTo([]byte("bubble"), group); err != nil {
		t.Errorf("one interface failed: %v", err)
	}
	if want := []int{7}; !slices.Equal(h.sentOn, want) {
		t.Errorf("sent on %v, want %v", h.sentOn, want)
	}
	if st := tr.stats(); st.Sent != 3 || st.SendErrors != 1 || !slices.Equal(st.Interfaces, []string{"br0"}) {
		t.Errorf("stats %+v", st)
	}

	// Every interface failing is the caller's failure.
	h.failOn = map[int]bool{3: true, 7: true}
	if err := tr.WriteTo([]byte("bubble"), group); err == nil {
		t.Error("no error when every interface failed")
	}
	if st := tr.stats(); st.SendErrors != 3 || len(st.Interfaces) != 0 {
		t.Errorf("stats %+v", st)
	}
	wantFollows := [][]string{{"eth0", "wlan0"}, {"wlan0", "br0"}, {"wlan0", "br0"}}
	if fmt.Sprint(h.follows) != fmt.Sprint(wantFollows) {
		t.Errorf("memberships followed %v, want %v", h.follows, wantFollows)
	}

	// No suitable interface, or no list: the routing table decides.
	h.links = []discoveryLink{lo}
	h.sentOn = nil
	if err := tr.WriteTo([]byte("bubble"), group); err != nil {
		t.Fatal(err)
	}
	h.listErr = errors.New("netlink: permission denied")
	if err := tr.WriteTo([]byte("bubble"), group); err != nil {
		t.Fatal(err)
	}
	if len(h.sentOn) != 0 || !slices.Equal(conn.got, []netip.AddrPort{server, group, group}) {
		t.Errorf("fallback: per interface %v, plain %v", h.sentOn, conn.got)
	}
	if st := tr.stats(); st.ListErrors != 1 {
		t.Errorf("list errors %d, want 1", st.ListErrors)
	}

	// After the discovery socket is closed, memberships are no longer
	// followed.
	n := len(h.follows)
	tr.follow.Store(nil)
	h.listErr = nil
	h.links = []discoveryLink{eth0}
	if err := tr.WriteTo([]byte("bubble"), group); err != nil {
		t.Fatal(err)
	}
	if len(h.follows) != n {
		t.Errorf("memberships followed after the socket closed: %v", h.follows[n:])
	}
}

// TestDiscoverySocketFollow checks that the discovery socket joins the
// group on the interfaces it is given, carries on past one it cannot join,
// and leaves those that go.
func TestDiscoverySocketFollow(t *testing.T) {
	lo := loopback(t)
	handle, got := collector()
	d, err := openDiscovery(0, nil, handle, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lol := discoveryLink{Index: lo.Index, Name: lo.Name}
	gone := discoveryLink{Index: 1 << 30, Name: "gone0"}
	d.follow([]discoveryLink{gone, lol})
	if m := d.memberships(); !slices.Equal(m, []string{lo.Name}) || d.joinErrors.Load() != 1 {
		t.Fatalf("memberships %v, join errors %d; want [%s] and 1", m, d.joinErrors.Load(), lo.Name)
	}
	snd, from := multicastSender(t, lo)
	if _, err := snd.WriteToUDP([]byte("on lo"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(proto.DiscoveryGroup, d.LocalAddr().Port()))); err != nil {
		t.Fatal(err)
	}
	if dg := receive(t, got, "multicast on a followed interface"); dg.from != from {
		t.Errorf("from %v, want %v", dg.from, from)
	}

	// The same list again changes nothing; an empty one keeps what is
	// there.
	d.follow([]discoveryLink{lol})
	d.follow(nil)
	if m := d.memberships(); !slices.Equal(m, []string{lo.Name}) || d.joinErrors.Load() != 1 {
		t.Fatalf("memberships %v, join errors %d", m, d.joinErrors.Load())
	}

	// lo gone from the list: the socket left the group there, so leaving
	// again fails.
	d.follow([]discoveryLink{gone})
	if m := d.memberships(); len(m) != 0 {
		t.Fatalf("memberships %v after lo went", m)
	}
	if err := d.pc.LeaveGroup(lo, discoveryGroupAddr); err == nil {
		t.Error("still a member on lo")
	}
}

// TestLinkSender sends through a real service socket out of lo, with
// multicast TTL 0 so that nothing leaves the host, and checks that the
// discovery socket gets it from the service socket's address.
func TestLinkSender(t *testing.T) {
	lo := loopback(t)
	handle, got := collector()
	d, err := listenDiscovery(0, lo, handle, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	svc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if err := ipv4.NewPacketConn(svc).SetMulticastTTL(0); err != nil {
		t.Fatal(err)
	}
	send, err := linkSender(svc)
	if err != nil {
		t.Fatal(err)
	}
	if send == nil {
		t.Skip("no per-interface sends on this system")
	}
	to := netip.AddrPortFrom(proto.DiscoveryGroup, d.LocalAddr().Port())
	if err := send([]byte("via lo"), to, lo.Index); err != nil {
		t.Fatal(err)
	}
	dg := receive(t, got, "bubble sent out of lo")
	if want := svc.LocalAddr().(*net.UDPAddr).AddrPort(); string(dg.b) != "via lo" || dg.from != want {
		t.Errorf("got %q from %v, want %q from %v", dg.b, dg.from, "via lo", want)
	}
	if err := send([]byte("x"), to, 1<<30); err == nil {
		t.Error("no error sending out of an interface that does not exist")
	}
}
