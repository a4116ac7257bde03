package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
)

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-bind", "nonsense"},
		{"-bind", "[::1]:3544"},
		{"-prefix", "2001::/48"},
		{"-prefix", "10.0.0.0/8"},
		{"-tun", ""},
		{"-tun", "a-name-longer-than-fifteen"},
		{"-max-peers", "0"},
		{"-no-such-flag"},
		{"-log-format", "xml"},
		{"-log-level", "loud"},
		{"extra"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, noEnv, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		if stderr.Len() == 0 {
			t.Errorf("%q: no message", args)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, noEnv, &stdout, &stderr); code != 0 {
		t.Errorf("-h: exit %d", code)
	}
	if !strings.Contains(stderr.String(), "-host-specific") {
		t.Errorf("usage does not list -host-specific")
	}
}

// TestRelayInNetns runs the command inside a new network namespace (root
// only) with a real TUN device: a client's packet to a native IPv6 socket on
// this host goes through the relay and the kernel, and the answer comes back
// through the kernel's route into the TUN device.
func TestRelayInNetns(t *testing.T) {
	if os.Getenv("RELAY_TEST_NETNS") == "1" {
		testInNetns(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^TestRelayInNetns$", "-test.v")
	cmd.Env = append(os.Environ(), "RELAY_TEST_NETNS=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in netns:\n%s", out)
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestRelayInNetns")) {
		t.Fatalf("netns run failed: %v", err)
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

func testInNetns(t *testing.T) {
	sh(t, "ip", "link", "set", "lo", "up")
	native := netip.MustParseAddr("2001:db8::80")
	sh(t, "ip", "addr", "add", native.String()+"/128", "dev", "lo", "nodad")

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-bind", "127.0.0.1:3544", "-tun", "teredo9", "-any-ipv4",
			"-status", "127.0.0.1:9545", "-v"}, noEnv, pw, os.Stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v", err)
	}
	if want := "teredo-relay: ready on 127.0.0.1:3544, tun teredo9\n"; line != want {
		t.Fatalf("ready line %q, want %q", line, want)
	}
	go io.Copy(io.Discard, pr)

	// A native service on this host.
	svc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: native.AsSlice(), Port: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	// A Teredo client on loopback.
	cl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	mapped := cl.LocalAddr().(*net.UDPAddr).AddrPort()
	mapped = netip.AddrPortFrom(mapped.Addr().Unmap(), mapped.Port())
	teredo := proto.Address{Server: netip.MustParseAddr("127.0.0.9"), Mapped: mapped}.Addr()
	pkt := udp6(teredo, native, 4000, 7, []byte("hello relay"))
	// The kernel installs the local route of a new address from a work
	// queue, so the very first packet may meet no route: resend until it
	// arrives, within bounds.
	buf := make([]byte, 2048)
	var (
		n    int
		from netip.AddrPort
	)
	for i := 0; ; i++ {
		if _, err := cl.WriteToUDPAddrPort(pkt, netip.MustParseAddrPort("127.0.0.1:3544")); err != nil {
			t.Fatal(err)
		}
		svc.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, from, err = svc.ReadFromUDPAddrPort(buf)
		if err == nil {
			break
		}
		if i < 20 {
			continue
		}
		resp, _ := http.Get("http://127.0.0.1:9545/status")
		var b []byte
		if resp != nil {
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		t.Fatalf("native service got nothing: %v\n%s", err, b)
	}
	if string(buf[:n]) != "hello relay" || from.Addr() != teredo {
		t.Fatalf("service got %q from %v", buf[:n], from)
	}
	if _, err := svc.WriteToUDPAddrPort([]byte("hello client"), from); err != nil {
		t.Fatal(err)
	}
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	var rfrom netip.AddrPort
	for {
		n, rfrom, err = cl.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("client got no answer: %v", err)
		}
		// Skip the kernel's ICMPv6 errors about resent packets that met no
		// route: the relay rightly carries them to the client.
		if n < 40 || proto.NextHeader(buf[:n]) != proto.ProtoICMPv6 {
			break
		}
	}
	if !bytes.HasSuffix(buf[:n], []byte("hello client")) || proto.Src(buf[:n]) != native || rfrom.Port() != 3544 {
		t.Fatalf("client got %x from %v", buf[:n], rfrom)
	}

	// The relay counts a packet after handing it on: poll briefly.
	var st relay.Status
	for i := 0; i < 100; i++ {
		resp, err := http.Get("http://127.0.0.1:9545/status")
		if err != nil {
			t.Fatal(err)
		}
		st = relay.Status{}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Counters["rx_forwarded"] >= 1 && st.Counters["tx_forwarded"] >= 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.Counters["rx_forwarded"] < 1 || st.Counters["tx_forwarded"] < 1 || st.Peers != 1 {
		t.Errorf("status %+v", st)
	}
	resp, err := http.Get("http://127.0.0.1:9545/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(body, []byte("\nteredo_relay_peers 1\n")) {
		t.Errorf("metrics:\n%s", body)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no graceful stop")
	}
}

func udp6(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	l := 8 + len(payload)
	b := []byte{0x60, 0, 0, 0, byte(l >> 8), byte(l), proto.ProtoUDP, 64}
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	b = append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), byte(l>>8), byte(l), 0, 0)
	b = append(b, payload...)
	cs := proto.Checksum(src, dst, proto.ProtoUDP, b[40:])
	b[46], b[47] = byte(cs>>8), byte(cs)
	return b
}

func noEnv(string) string { return "" }

// TestConventions checks the environment variables, -version and the form
// of usage errors that every command shares.
func TestConventions(t *testing.T) {
	env := map[string]string{"TEREDO_RELAY_BIND": "127.0.0.1:4000", "TEREDO_RELAY_HOST_SPECIFIC": "true", "TEREDO_RELAY_MAX_PEERS": "7"}
	o, err := parseFlags([]string{"-max-peers", "8"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || o.bind.String() != "127.0.0.1:4000" || !o.hostSpecific || o.maxPeers != 8 {
		t.Errorf("from the environment: %+v, %v", o, err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-max-peers", "0"}, noEnv, &stdout, &stderr); code != 2 ||
		stderr.String() != "teredo-relay: -max-peers 0 must be positive\nRun 'teredo-relay -h' for the flags.\n" {
		t.Errorf("usage error: exit %d, stderr %q", code, stderr.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"-version"}, noEnv, &stdout, &stderr); code != 0 ||
		!strings.HasPrefix(stdout.String(), "teredo-relay ") || !strings.Contains(stdout.String(), "go1.") {
		t.Errorf("-version: exit %d, stdout %q", code, stdout.String())
	}
}
