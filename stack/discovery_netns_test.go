//go:build linux

package stack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
)

// netnsChildEnv marks the test binary re-executed inside a fresh network
// namespace by TestLocalDiscoveryNetns.
const netnsChildEnv = "TEREDO_STACK_DISCOVERY_NETNS"

// The namespace's links, two LANs: each is one end of a veth pair (a dummy
// interface would do, but not every kernel has the module) whose other end
// is up with no address and no group. Linux loops multicast sent on them
// back to the namespace's own sockets, tagged with the link it was sent
// on; the copy on the wire reaches only the peer end, which drops it.
const (
	netnsLink       = "d0"
	netnsLinkPeer   = "d0peer"
	netnsLink2      = "d1"
	netnsLink2Peer  = "d1peer"
	netnsServerPort = 4544 // not 3544: our server does not share its port
)

var (
	netnsClientIP  = netip.MustParseAddr("10.77.0.1")
	netnsPrimary   = netip.MustParseAddr("10.77.0.10")
	netnsSecondary = netip.MustParseAddr("10.77.0.11")
	netnsLAN2IP    = netip.MustParseAddr("10.78.0.1")
)

// lookTool finds an external tool in PATH or the sbin directories that
// non-login root shells lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// TestLocalDiscoveryNetns runs two stacks with local discovery on one host
// behind no NAT, in a network namespace of its own with a Teredo server and
// two LANs: each must find the other through 224.0.0.253 without any packet
// through the server, and TCP between them must go directly. Stack a
// listens on the second LAN only; b, with no interface configured, must
// send its discovery bubbles on both, and a must hear the one on its LAN. It needs root (for
// unshare -n); it skips otherwise, and fails under CI=true.
func TestLocalDiscoveryNetns(t *testing.T) {
	if parentNS := os.Getenv(netnsChildEnv); parentNS != "" {
		localDiscoveryInNetns(t, parentNS)
		return
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "not root")
	}
	unshare, err := lookTool("unshare")
	if err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := lookTool("ip"); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		msg := "local discovery netns test needs root, unshare (util-linux) and ip (iproute2): " + strings.Join(missing, ", ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "; CI=true requires it")
		}
		t.Skip(msg)
	}

	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "-n", os.Args[0],
		"-test.run=^TestLocalDiscoveryNetns$", "-test.v", "-test.count=1", "-test.timeout=120s")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+parentNS)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("inside the namespace:\n%s", out)
	if err != nil {
		t.Fatalf("netns run: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestLocalDiscoveryNetns")) {
		t.Fatal("the netns run did not pass (skipped or no tests ran)")
	}
}

// localDiscoveryInNetns is the test proper, inside the fresh namespace.
// parentNS names the namespace of the parent test, which must not be
// touched.
func localDiscoveryInNetns(t *testing.T, parentNS string) {
	if self, err := os.Readlink("/proc/self/ns/net"); err != nil || self == parentNS {
		t.Fatalf("refusing to configure the network: not in a namespace of our own (%s, parent %s, %v)", self, parentNS, err)
	}
	ipTool, err := lookTool("ip")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", netnsLink, "type", "veth", "peer", "name", netnsLinkPeer},
		{"link", "set", netnsLinkPeer, "up"},
		{"link", "set", netnsLink, "multicast", "on", "up"},
		{"addr", "add", netnsClientIP.String() + "/24", "dev", netnsLink},
		{"addr", "add", netnsPrimary.String() + "/24", "dev", netnsLink},
		{"addr", "add", netnsSecondary.String() + "/24", "dev", netnsLink},
		{"link", "add", netnsLink2, "type", "veth", "peer", "name", netnsLink2Peer},
		{"link", "set", netnsLink2Peer, "up"},
		{"link", "set", netnsLink2, "multicast", "on", "up"},
		{"addr", "add", netnsLAN2IP.String() + "/24", "dev", netnsLink2},
		// The route that picks the "default interface" for the group.
		{"route", "add", "224.0.0.0/4", "dev", netnsLink},
	} {
		if out, err := exec.Command(ipTool, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	captures := map[string]*capture{netnsLink: startCapture(t, netnsLink), netnsLink2: startCapture(t, netnsLink2)}

	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := server.New(server.Config{
		Primary:    netnsPrimary,
		Secondary:  netnsSecondary,
		Port:       netnsServerPort,
		IPv4Filter: proto.AnyIPv4,
		Logger:     log.With("role", "server"),
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(context.Background()); close(served) }()
	defer func() { srv.Close(); <-served }()

	newStack := func(name, ifname string) *stack.Stack {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := stack.New(ctx, stack.Config{
			Servers:            []netip.Addr{netnsPrimary},
			Secondary:          netnsSecondary,
			ServerPort:         netnsServerPort,
			LocalAddr:          netip.AddrPortFrom(netnsClientIP, 0),
			IPv4Filter:         proto.AnyIPv4,
			LocalDiscovery:     true,
			DiscoveryInterface: ifname,
			Logger:             log.With("stack", name),
		})
		if err != nil {
			t.Fatalf("stack %s: %v", name, err)
		}
		if !s.LocalDiscovery() {
			s.Close()
			t.Fatalf("stack %s: local discovery does not run", name)
		}
		return s
	}
	// One after the other: b's discovery bubble reaches a, whose socket is
	// open, and a's unicast answer reaches b. a joins on the second LAN
	// only and refuses what comes in on the first; b joins and sends on
	// every suitable interface, both LANs.
	a := newStack("a", netnsLink2)
	defer a.Close()
	b := newStack("b", "")
	defer b.Close()
	if a.LocalAddr().Port() == b.LocalAddr().Port() {
		t.Fatalf("both stacks on %v", a.LocalAddr())
	}
	t.Logf("a %v on %v, b %v on %v", a.Addr(), a.LocalAddr(), b.Addr(), b.LocalAddr())

	// Each finds the other before any application traffic.
	deadline := time.Now().Add(10 * time.Second)
	var sa, sb peer.State
	for {
		sa, sb = a.PeerState(b.Addr()), b.PeerState(a.Addr())
		if sa != peer.Unknown && sb != peer.Unknown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no local peers after 10 s: a sees b %v, b sees a %v; a %+v; b %+v", sa, sb, a.Status().Client, b.Status().Client)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("before traffic: a sees b %v, b sees a %v", sa, sb)
	// With multicast loopback on, each stack hears its own discovery
	// bubble (sent within a second of qualifying), which its client drops.
	for name, s := range map[string]*stack.Stack{"a": a, "b": b} {
		for s.Status().Client.Counters.Drops["discovery"] == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("stack %s: heard none of its own discovery bubbles (multicast loopback)", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// a heard a discovery bubble other than its own: b's, sent on the
	// second LAN (its copy on the first one a refuses).
	for {
		st := a.Status()
		if st.Discovery.Delivered > st.Client.Counters.Drops["discovery"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stack a heard no discovery bubble but its own on %s: %+v, drops %v", netnsLink2, st.Discovery, st.Client.Counters.Drops)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := b.Status().Discovery; !slices.Contains(d.Interfaces, netnsLink) || !slices.Contains(d.Interfaces, netnsLink2) || d.SendErrors != 0 || d.JoinErrors != 0 {
		t.Errorf("stack b: discovery %+v; want bubbles on %s and %s without errors", d, netnsLink, netnsLink2)
	}
	if d := a.Status().Discovery; len(d.Interfaces) != 0 || d.Sent != 0 {
		t.Errorf("stack a, on %s only: per-interface discovery %+v", netnsLink2, d)
	}
	st := srv.Stats()
	if st.ForwardedTeredo != 0 {
		t.Errorf("the server relayed %d bubbles: discovery should have made them needless", st.ForwardedTeredo)
	}

	// TCP both ways, directly. (Which side still holds the other as an
	// untrusted local peer here depends on whose first discovery bubble
	// went out after the other's socket opened.)
	t.Logf("before TCP: a sees b %v, b sees a %v", a.PeerState(b.Addr()), b.PeerState(a.Addr()))
	before := srv.Stats().Received
	for _, dir := range []struct {
		name     string
		from, to *stack.Stack
	}{{"a->b", a, b}, {"b->a", b, a}} {
		if err := echoTCP(dir.from, dir.to); err != nil {
			t.Fatalf("%s: %v", dir.name, err)
		}
	}
	if got := srv.Stats(); got.ForwardedTeredo != 0 || got.Received-before > 4 {
		t.Errorf("the server saw traffic during TCP: received %d datagrams, relayed %d", got.Received-before, got.ForwardedTeredo)
	}
	for name, s := range map[string]*stack.Stack{"a": a, "b": b} {
		other := b
		if s == b {
			other = a
		}
		if ps := s.PeerState(other.Addr()); ps != peer.Reachable {
			t.Errorf("stack %s: peer state %v after TCP, want reachable", name, ps)
		}
	}

	// The discovery bubbles that left on each link had IP TTL 1, and b's
	// left on both links.
	for _, link := range []string{netnsLink, netnsLink2} {
		capt := captures[link]
		pkts := capt.stop()
		fromB := 0
		for _, p := range pkts {
			if p.ttl != 1 || p.ipv6Dst != proto.AllNodes {
				t.Errorf("discovery datagram from %v on %s: TTL %d, IPv6 destination %v; want TTL 1 to %v", p.src, link, p.ttl, p.ipv6Dst, proto.AllNodes)
			}
			if p.src == b.LocalAddr() {
				fromB++
			}
		}
		if fromB == 0 {
			capt.mu.Lock()
			seen := fmt.Sprint(capt.seen)
			capt.mu.Unlock()
			t.Errorf("no discovery bubble of b (%v) seen leaving on %s; %d of others; IPv4 packets seen by packet type: %s", b.LocalAddr(), link, len(pkts), seen)
			continue
		}
		t.Logf("%d discovery bubbles left on %s (%d of b), all with TTL 1", len(pkts), link, fromB)
	}
}

// echoTCP sends 256 KiB over TCP from one stack to an echo listener on the
// other and checks what comes back, all within 20 s.
func echoTCP(from, to *stack.Stack) error {
	ln, err := listener.Listen(to, "tcp6", ":7")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after ln.Close, which ends a pending Accept
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialer.New(from).DialContext(ctx, "tcp", netip.AddrPortFrom(to.Addr(), 7).String())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	want := bytes.Repeat([]byte("local peer "), 256<<10/11)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Write(want)
		c.(*dialer.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, want) {
		return fmt.Errorf("echo: %d bytes, err %v; want %d bytes", len(got), err, len(want))
	}
	return nil
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// discoveryPacket is an IPv4 datagram to 224.0.0.253:3544 seen leaving.
type discoveryPacket struct {
	src     netip.AddrPort
	ttl     uint8
	ipv6Dst netip.Addr
}

// capture records the discovery datagrams that leave on an interface, read
// from a packet socket with a short timeout so that stop is prompt.
type capture struct {
	fd   int
	quit chan struct{}
	done chan struct{}
	mu   sync.Mutex
	pkts []discoveryPacket
	seen map[uint8]int // IPv4 packets by packet type, for diagnostics
}

func startCapture(t *testing.T, ifname string) *capture {
	t.Helper()
	ifi, err := netInterfaceIndex(ifname)
	if err != nil {
		t.Fatal(err)
	}
	// Only ETH_P_ALL taps see outgoing packets; IPv4 is picked in run.
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind packet socket to %s: %v", ifname, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	c := &capture{fd: fd, quit: make(chan struct{}), done: make(chan struct{}), seen: make(map[uint8]int)}
	go c.run()
	t.Cleanup(func() { c.stop() })
	return c
}

func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for {
		select {
		case <-c.quit:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		c.mu.Lock()
		c.seen[ll.Pkttype]++
		c.mu.Unlock()
		if ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		if p, ok := parseDiscovery(buf[:n]); ok {
			c.mu.Lock()
			c.pkts = append(c.pkts, p)
			c.mu.Unlock()
		}
	}
}

// stop ends the capture and returns what it saw; it may be called again.
func (c *capture) stop() []discoveryPacket {
	select {
	case <-c.quit:
	default:
		close(c.quit)
	}
	<-c.done
	unix.Close(c.fd)
	c.fd = -1
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkts
}

// parseDiscovery picks IPv4/UDP datagrams to the discovery group and port.
func parseDiscovery(b []byte) (discoveryPacket, bool) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_UDP {
		return discoveryPacket{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl+8 {
		return discoveryPacket{}, false
	}
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	udp := b[ihl:]
	if dst != proto.DiscoveryGroup || binary.BigEndian.Uint16(udp[2:4]) != proto.Port {
		return discoveryPacket{}, false
	}
	p := discoveryPacket{
		src: netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(udp[0:2])),
		ttl: b[8],
	}
	if payload := udp[8:]; len(payload) >= 40 {
		p.ipv6Dst = netip.AddrFrom16([16]byte(payload[24:40]))
	}
	return p, true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func netInterfaceIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}
