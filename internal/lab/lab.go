package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses of the lab internet. 198.18.0.0/15 is global unicast under RFC 4380's
// rules, so servers here need no special casing; 2001:db8:1::/64 is a documentation
// prefix outside Teredo's 2001::/32.
var (
	InternetV4 = netip.MustParsePrefix("198.18.0.0/24")
	InternetV6 = netip.MustParsePrefix("2001:db8:1::/64")
	// TeredoPrefix is the Teredo service prefix that the IPv6-only host routes to the relay.
	TeredoPrefix = netip.MustParsePrefix("2001::/32")

	ServerPrimary   = netip.MustParseAddr("198.18.0.2")
	ServerSecondary = netip.MustParseAddr("198.18.0.3")
	ServerV6        = netip.MustParseAddr("2001:db8:1::2")
	RelayV4         = netip.MustParseAddr("198.18.0.4")
	RelayV6         = netip.MustParseAddr("2001:db8:1::4")
	V6HostAddr      = netip.MustParseAddr("2001:db8:1::6")
)

// cmdTimeout bounds every configuration command the lab runs.
const cmdTimeout = 15 * time.Second

// nsPrefix starts every namespace name the lab creates, followed by the creating
// process's pid, so leftovers of a killed run can be recognised and removed.
const nsPrefix = "tlab-"

// Options choose which parts of the topology a test needs; the zero value builds
// everything (server, relay, IPv6-only host and one client behind each NAT kind).
type Options struct {
	// Clients lists the NATed client hosts to build; nil means DefaultClients.
	Clients []ClientSpec
	// NoRelay and NoV6Host leave out the relay host and the IPv6-only host.
	NoRelay  bool
	NoV6Host bool
	// Transit names clients whose NAT routers reach the internet through the
	// transit router (Lab.Transit) instead of the bridge; see transit.go.
	Transit []string
	// Behind adds hosts to the LAN of another client's NAT: host name → the
	// name of a client in Clients. See transit.go.
	Behind map[string]string
}

// ClientSpec names a client host and the kind of NAT in front of it.
type ClientSpec struct {
	Name string
	NAT  NATKind
}

// DefaultClients is one client per NAT kind, two behind home routers for
// client-to-client tests.
var DefaultClients = []ClientSpec{
	{"a1", HomeRouter}, {"a2", HomeRouter}, {"b", OpenMasquerade}, {"c", Symmetric}, {"d", FullCone},
}

// Lab is one freshly built topology. All its namespaces and processes are removed when
// the test that created it ends, whether it passes, fails or panics.
type Lab struct {
	// ID is unique to this lab and starts every namespace name.
	ID string

	Inet    *Host // holds the bridge "br0" that is the lab internet; no addresses
	Server  *Host // ServerPrimary and ServerSecondary, ServerV6
	Relay   *Host // RelayV4, RelayV6, IPv6 forwarding on; nil with NoRelay
	V6Host  *Host // V6HostAddr only, 2001::/32 routed to the relay; nil with NoV6Host
	Transit *Host // the transit router; nil unless Options.Transit names a client
	Clients map[string]*Host

	t     testing.TB
	ports int // veth counter on the bridge
}

// New builds the topology described by opts, or skips (fails under CI=true) t when the
// lab's prerequisites are missing.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	Require(t)
	sweepStale(t)
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("lab: random id: %v", err)
	}
	l := &Lab{
		ID:      fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), hex.EncodeToString(rnd[:])),
		Clients: map[string]*Host{},
		t:       t,
	}
	start := time.Now()
	if err := l.build(opts); err != nil {
		t.Fatalf("lab: build topology: %v", err)
	}
	t.Logf("lab %s built in %v", l.ID, time.Since(start).Round(time.Millisecond))
	return l
}

func (l *Lab) build(opts Options) error {
	var err error
	if l.Inet, err = l.newNS("inet"); err != nil {
		return err
	}
	if err := l.Inet.ip("link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := l.Inet.ip("link", "set", "br0", "up"); err != nil {
		return err
	}
	if l.Server, err = l.AddInternetHost("srv", []netip.Addr{ServerPrimary, ServerSecondary}, []netip.Addr{ServerV6}); err != nil {
		return err
	}
	if !opts.NoRelay {
		if l.Relay, err = l.AddInternetHost("rly", []netip.Addr{RelayV4}, []netip.Addr{RelayV6}); err != nil {
			return err
		}
		if err := l.Relay.sysctl("net.ipv6.conf.all.forwarding=1"); err != nil {
			return err
		}
	}
	if !opts.NoV6Host {
		if l.V6Host, err = l.AddInternetHost("v6", nil, []netip.Addr{V6HostAddr}); err != nil {
			return err
		}
		if err := l.V6Host.RouteVia(TeredoPrefix, RelayV6); err != nil {
			return err
		}
	}
	clients := opts.Clients
	if clients == nil {
		clients = DefaultClients
	}
	transit, shared, err := l.checkPlacement(clients, opts)
	if err != nil {
		return err
	}
	for i, c := range clients {
		if _, dup := l.Clients[c.Name]; dup {
			return fmt.Errorf("duplicate client name %q", c.Name)
		}
		h, err := l.addNATClient(c, i, transit[c.Name], shared[c.Name])
		if err != nil {
			return fmt.Errorf("client %s: %w", c.Name, err)
		}
		l.Clients[c.Name] = h
	}
	return l.addBehind(opts.Behind)
}

// newNS creates a namespace with loopback up and registers its removal.
func (l *Lab) newNS(role string) (*Host, error) {
	h := &Host{Name: role, NS: l.ID + "-" + role, lab: l}
	ipPath, err := LookTool("ip")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, exec.CommandContext(ctx, ipPath, "netns", "add", h.NS)); err != nil {
		return nil, err
	}
	l.t.Cleanup(func() {
		if err := removeNS(h.NS); err != nil {
			l.t.Errorf("lab: teardown: %v", err)
		}
	})
	return h, h.ip("link", "set", "lo", "up")
}

// AddInternetHost adds a host on the lab internet with the given addresses on its
// "eth0"; IPv6 addresses are added without duplicate address detection. Tests use it
// for extra relays or peers.
func (l *Lab) AddInternetHost(name string, v4, v6 []netip.Addr) (*Host, error) {
	h, err := l.newNS(name)
	if err != nil {
		return nil, err
	}
	if err := l.plug(h, "eth0"); err != nil {
		return nil, err
	}
	for _, a := range v4 {
		if !InternetV4.Contains(a) {
			return nil, fmt.Errorf("%v is outside the lab internet %v", a, InternetV4)
		}
		if err := h.ip("addr", "add", netip.PrefixFrom(a, InternetV4.Bits()).String(), "dev", "eth0"); err != nil {
			return nil, err
		}
		h.IPv4 = append(h.IPv4, a)
	}
	for _, a := range v6 {
		if !InternetV6.Contains(a) {
			return nil, fmt.Errorf("%v is outside the lab internet %v", a, InternetV6)
		}
		if err := h.ip("-6", "addr", "add", netip.PrefixFrom(a, InternetV6.Bits()).String(), "dev", "eth0", "nodad"); err != nil {
			return nil, err
		}
		h.IPv6 = append(h.IPv6, a)
	}
	return h, nil
}

// plug connects a new interface named ifname in h to the internet bridge.
func (l *Lab) plug(h *Host, ifname string) error {
	l.ports++
	port := fmt.Sprintf("p%d", l.ports)
	if err := l.Inet.ip("link", "add", port, "type", "veth", "peer", "name", ifname, "netns", h.NS); err != nil {
		return err
	}
	if err := l.Inet.ip("link", "set", port, "master", "br0", "up"); err != nil {
		return err
	}
	return h.ip("link", "set", ifname, "up")
}

// sweepStale removes namespaces left by lab runs whose process no longer exists (a
// test binary killed by a signal or a timeout never runs its cleanups).
func sweepStale(t testing.TB) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its owner is alive
		}
		if err := removeNS(e.Name()); err != nil {
			t.Logf("lab: removing stale namespace: %v", err)
		}
	}
}

// removeNS kills every process left in the namespace, then deletes it. A namespace
// outlives `ip netns del` while a process is in it, so the kill comes first.
func removeNS(ns string) error {
	ipPath, err := LookTool("ip")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		out, err := runCmd(ctx, exec.CommandContext(ctx, ipPath, "netns", "pids", ns))
		cancel()
		if err != nil {
			break // namespace already gone or unreadable: try the delete anyway
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s: processes %v survive SIGKILL", ns, pids)
		}
		for _, s := range pids {
			if pid, err := strconv.Atoi(s); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	_, err = runCmd(ctx, exec.CommandContext(ctx, ipPath, "netns", "del", ns))
	return err
}
