package tun

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// TestTUN runs itself again inside a new network namespace (root only):
// a datagram to a Teredo address leaves through the device, and a packet
// written to the device reaches a local socket.
func TestTUN(t *testing.T) {
	if os.Getenv("TUN_TEST_NETNS") == "1" {
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
	cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^TestTUN$", "-test.v")
	cmd.Env = append(os.Environ(), "TUN_TEST_NETNS=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in netns:\n%s", out)
	if err != nil {
		t.Fatalf("netns run: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestTUN")) {
		t.Fatal("the netns run did not pass")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

func testInNetns(t *testing.T) {
	run(t, "ip", "link", "set", "lo", "up")
	run(t, "ip", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad")
	d, err := Open(Config{Name: "teredotest0", Routes: []netip.Prefix{proto.Prefix}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.Configured() || d.Name() != "teredotest0" {
		t.Fatalf("configured %v name %q", d.Configured(), d.Name())
	}
	ifi, err := net.InterfaceByName("teredotest0")
	if err != nil || ifi.MTU != MTU || ifi.Flags&net.FlagUp == 0 {
		t.Fatalf("interface %+v, %v", ifi, err)
	}
	peer := netip.MustParseAddr("2001:0:cb00:7101::1")
	sock, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5555})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	if _, err := sock.WriteToUDPAddrPort([]byte("out"), netip.AddrPortFrom(peer, 9)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no packet from the kernel")
		}
		n, err := d.ReadPacket(buf)
		if err != nil {
			t.Fatal(err)
		}
		p := buf[:n]
		if n >= 40 && p[0]>>4 == 6 && proto.Dst(p) == peer && proto.NextHeader(p) == proto.ProtoUDP {
			if !bytes.HasSuffix(p, []byte("out")) {
				t.Fatalf("wrong payload %x", p)
			}
			break
		}
		// Router solicitations and the like: skip.
	}
	// A reply written to the device reaches the socket.
	payload := []byte("back")
	l := 8 + len(payload)
	pkt := []byte{0x60, 0, 0, 0, byte(l >> 8), byte(l), proto.ProtoUDP, 64}
	s, dd := peer.As16(), netip.MustParseAddr("2001:db8::1").As16()
	pkt = append(pkt, s[:]...)
	pkt = append(pkt, dd[:]...)
	pkt = append(pkt, 0, 9, 0x15, 0xb3, byte(l>>8), byte(l), 0, 0)
	pkt = append(pkt, payload...)
	cs := proto.Checksum(peer, netip.MustParseAddr("2001:db8::1"), proto.ProtoUDP, pkt[40:])
	pkt[46], pkt[47] = byte(cs>>8), byte(cs)
	// The kernel installs the local route of a new address from a work
	// queue, so the first packet may meet no route (Ip6InNoRoutes): retry.
	var (
		n    int
		from netip.AddrPort
	)
	for i := 0; ; i++ {
		if err := d.WritePacket(pkt); err != nil {
			t.Fatal(err)
		}
		sock.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, from, err = sock.ReadFromUDPAddrPort(buf)
		if err == nil {
			break
		}
		if i == 20 {
			out, _ := exec.Command("sh", "-c", "ip -6 addr; ip -6 route; ip -s link show teredotest0; nstat -az | grep -iE 'ip6|udp6' | grep -v ' 0 '").CombinedOutput()
			t.Fatalf("reply not delivered: %v\n%s", err, out)
		}
	}
	if string(buf[:n]) != "back" || from.Addr() != peer {
		t.Fatalf("got %q from %v", buf[:n], from)
	}
	// ReadPackets returns queued packets together, in order.
	const burst = 16
	for i := range burst {
		if _, err := sock.WriteToUDPAddrPort([]byte{'b', byte(i)}, netip.AddrPortFrom(peer, 9)); err != nil {
			t.Fatal(err)
		}
	}
	bufs, sizes := make([][]byte, 8), make([]int, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	got, calls := 0, 0
	for got < burst {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("%d of %d packets read", got, burst)
		}
		k, err := d.ReadPackets(bufs, sizes)
		if err != nil || k < 1 || k > len(bufs) {
			t.Fatalf("ReadPackets = %d, %v", k, err)
		}
		calls++
		for i := range k {
			p := bufs[i][:sizes[i]]
			if len(p) < 40 || p[0]>>4 != 6 || proto.Dst(p) != peer || proto.NextHeader(p) != proto.ProtoUDP {
				continue
			}
			if want := []byte{'b', byte(got)}; !bytes.HasSuffix(p, want) {
				t.Fatalf("packet %d: %x, want suffix %x", got, p, want)
			}
			got++
		}
	}
	if calls >= burst {
		t.Errorf("%d packets took %d reads: not batched", burst, calls)
	}
	// Close unblocks a reader with net.ErrClosed.
	done := make(chan error, 1)
	go func() {
		for { // the kernel may still send router solicitations and MLD reports
			if _, err := d.ReadPackets(bufs, sizes); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(10 * time.Millisecond)
	d.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadPackets")
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Config{Name: "a-name-that-is-far-too-long"}); err == nil {
		t.Error("long name accepted")
	}
}
