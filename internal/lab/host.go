package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Host is one network namespace of the lab: a machine on the internet bridge, a NAT
// router, or a client behind a NAT.
type Host struct {
	Name string // role in the lab, e.g. "srv", "a1"
	NS   string // network namespace name, for `ip netns exec`

	IPv4 []netip.Addr // the host's own IPv4 addresses (a client's are private LAN ones)
	IPv6 []netip.Addr // the host's global IPv6 addresses

	// NAT is the router in front of a client host; nil for hosts on the internet.
	NAT *NAT

	lab *Lab
}

// String returns the host's role and namespace.
func (h *Host) String() string { return h.Name + " (" + h.NS + ")" }

// Command returns a command that runs name inside the host's namespace. name is
// resolved like LookTool does when it is not a path.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if !strings.Contains(name, "/") {
		if p, err := LookTool(name); err == nil {
			name = p
		}
	}
	ipPath, err := LookTool("ip")
	if err != nil {
		ipPath = "ip"
	}
	return exec.CommandContext(ctx, ipPath, append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs name in the host's namespace and returns its combined output; the error
// carries the output when the command fails.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	return runCmd(ctx, h.Command(ctx, name, args...))
}

// MustRun is Run with a default timeout that fails t on error.
func (h *Host) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	return out
}

// Start runs name in the background inside the host's namespace, capturing its output.
// The process (and whatever it forks) is stopped when t's test ends; its output is
// logged if t failed.
//
// The program runs in its own PID namespace under a shell that stays PID 1 and dies
// with the test binary (unshare --kill-child), so even a test binary killed outright,
// as `go test -timeout` does without running cleanups, takes the program and its
// children with it: the kernel kills a PID namespace whose init dies. Miredo drops the
// plain parent-death signal when it changes credentials, so that alone is not enough.
func (h *Host) Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	if !strings.Contains(name, "/") {
		if p, err := LookTool(name); err == nil {
			name = p
		}
	}
	unshare, err := LookTool("unshare")
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	wrapped := append([]string{"--pid", "--fork", "--kill-child", "--", "/bin/sh", "-c", `setsid "$@" & wait $!`, "sh", name}, args...)
	cmd := h.Command(context.Background(), unshare, wrapped...)
	p, err := startProc(t, fmt.Sprintf("%s on %s", strings.Join(append([]string{filepath.Base(name)}, args...), " "), h.Name), cmd)
	if err != nil {
		t.Fatalf("%v", err)
	}
	p.wrapped = true
	return p
}

// ip runs `ip -n NS args...` with the default timeout.
func (h *Host) ip(args ...string) error {
	ipPath, err := LookTool("ip")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	_, err = runCmd(ctx, exec.CommandContext(ctx, ipPath, append([]string{"-n", h.NS}, args...)...))
	return err
}

// sysctl sets a net.* sysctl ("net.ipv4.ip_forward=1") inside the host's namespace.
// /proc/sys/net belongs to the namespace of the thread that opens it, so the write is
// done from a thread switched into the namespace, with no dependency on procps.
func (h *Host) sysctl(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || !strings.HasPrefix(k, "net.") || strings.Contains(k, "/") {
		return fmt.Errorf("lab: bad sysctl %q", kv)
	}
	path := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
	return inNetns(h.NS, func() error {
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			return fmt.Errorf("lab: sysctl %s in %s: %w", kv, h.Name, err)
		}
		return nil
	})
}

// nft loads an nftables ruleset into the host's namespace.
func (h *Host) nft(ruleset string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := h.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if _, err := runCmd(ctx, cmd); err != nil {
		return fmt.Errorf("%w\nruleset:\n%s", err, ruleset)
	}
	return nil
}

// RouteVia routes prefix (for instance TeredoPrefix, or a single /128 that a test sends
// to another relay) through the gateway via, replacing any route for the same prefix.
func (h *Host) RouteVia(prefix netip.Prefix, via netip.Addr) error {
	fam := "-4"
	if prefix.Addr().Is6() {
		fam = "-6"
	}
	if err := h.ip(fam, "route", "replace", prefix.Masked().String(), "via", via.String()); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in this host's namespace only.
func (h *Host) EnableForwarding() error {
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if err := h.sysctl(kv); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}

// UDPStats are a namespace's UDP counters (from /proc/net/snmp).
type UDPStats struct {
	InDatagrams, OutDatagrams, InErrors, NoPorts uint64
}

// UDPStats reads the UDP counters of the host's namespace. They count every datagram
// the namespace sent or received, so for a host running a single daemon they show its
// traffic even when the NAT's conntrack entries have expired and been recreated.
func (h *Host) UDPStats(ctx context.Context) (UDPStats, error) {
	out, err := h.Run(ctx, "cat", "/proc/net/snmp")
	if err != nil {
		return UDPStats{}, err
	}
	return parseUDPStats(out)
}

// parseUDPStats reads the "Udp:" header and value lines of /proc/net/snmp.
func parseUDPStats(out string) (UDPStats, error) {
	var names, values []string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "Udp:" {
			if names == nil {
				names = f[1:]
			} else {
				values = f[1:]
			}
		}
	}
	if names == nil || len(values) != len(names) {
		return UDPStats{}, fmt.Errorf("lab: no Udp counters in /proc/net/snmp")
	}
	var s UDPStats
	for i, n := range names {
		v, err := strconv.ParseUint(values[i], 10, 64)
		if err != nil {
			return UDPStats{}, fmt.Errorf("lab: Udp %s: %w", n, err)
		}
		switch n {
		case "InDatagrams":
			s.InDatagrams = v
		case "OutDatagrams":
			s.OutDatagrams = v
		case "InErrors":
			s.InErrors = v
		case "NoPorts":
			s.NoPorts = v
		}
	}
	return s, nil
}
