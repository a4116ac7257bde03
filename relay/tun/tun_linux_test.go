package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
func TestTUN(t *testing.T) { inNetns(t, "TestTUN", testInNetns) }

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
	if err != nil || ifi.MTU != proto.MinMTU || ifi.Flags&net.FlagUp == 0 {
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

// inNetns runs the test named name again inside a new network namespace
// (root only), where it calls fn.
func inNetns(t *testing.T, name string, fn func(*testing.T)) {
	if os.Getenv("TUN_TEST_NETNS") == "1" {
		fn(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace (CAP_NET_ADMIN for the TUN device)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^"+name+"$", "-test.v")
	cmd.Env = append(os.Environ(), "TUN_TEST_NETNS=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in netns:\n%s", out)
	if err != nil {
		t.Fatalf("netns run: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+name)) {
		t.Fatal("the netns run did not pass")
	}
}

// tcpPacket builds a TCP/IPv6 packet with a valid checksum.
func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags byte, opts, payload []byte) []byte {
	th := 20 + len(opts)
	p := make([]byte, 40+th+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(th+len(payload)))
	p[6], p[7] = 6, 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	t := p[40:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = byte(th/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	copy(t[20:], opts)
	copy(t[th:], payload)
	setTCPChecksum(p)
	return p
}

// TestTUNOffload shows that the kernel accepts a coalesced TCP
// super-segment on a device whose reads ask for no offload, splits it and
// delivers exactly its bytes to a kernel socket, which acknowledges all of
// them; a segment with a bad checksum is written alone and dropped by the
// kernel. With offload disabled the same batch goes packet by packet.
func TestTUNOffload(t *testing.T) {
	inNetns(t, "TestTUNOffload", func(t *testing.T) {
		run(t, "ip", "link", "set", "lo", "up")
		run(t, "ip", "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
		for i, off := range []bool{true, false} {
			name := map[bool]string{true: "offload", false: "plain"}[off]
			t.Run(name, func(t *testing.T) {
				testTCPThroughTUN(t, fmt.Sprintf("tunoff%d", i), uint16(8000+i), !off)
			})
		}
	})
}

func testTCPThroughTUN(t *testing.T, name string, port uint16, disable bool) {
	d, err := Open(Config{Name: name, Routes: []netip.Prefix{netip.MustParsePrefix("fd00:0:0:1::/64")}, DisableOffload: disable})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Stats().Offload == disable {
		t.Fatalf("offload %v with DisableOffload %v", d.Stats().Offload, disable)
	}
	remote := netip.AddrPortFrom(netip.MustParseAddr("fd00:0:0:1::2"), port)
	deadline := time.Now().Add(10 * time.Second)
	d.f.SetReadDeadline(deadline)

	type dialed struct {
		c   net.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() {
		dl := net.Dialer{Deadline: deadline}
		c, err := dl.Dial("tcp6", remote.String())
		dc <- dialed{c, err}
	}()
	// next returns the next TCP packet from remote's peer to remote.
	buf := make([]byte, 2048)
	next := func() []byte {
		for {
			n, err := d.ReadPacket(buf)
			if err != nil {
				t.Fatalf("reading the kernel's packets: %v", err)
			}
			p := buf[:n]
			if n >= 60 && p[0]>>4 == 6 && p[6] == 6 && proto.Dst(p) == remote.Addr() &&
				binary.BigEndian.Uint16(p[42:]) == port {
				return p
			}
		}
	}
	syn := next()
	if syn[53] != tcpSYN {
		t.Fatalf("first packet has flags %#x, not SYN", syn[53])
	}
	local := netip.AddrPortFrom(proto.Src(syn), binary.BigEndian.Uint16(syn[40:]))
	cseq := binary.BigEndian.Uint32(syn[44:]) + 1
	const iss = 1_000_000
	mss := []byte{2, 4, (proto.MinMTU - 60) >> 8, (proto.MinMTU - 60) & 0xff}
	if err := d.WritePacket(tcpPacket(remote, local, iss, cseq, tcpSYN|tcpACK, mss, nil)); err != nil {
		t.Fatal(err)
	}
	r := <-dc
	if r.err != nil {
		t.Fatalf("connect through the TUN device: %v", r.err)
	}
	conn := r.c
	defer conn.Close()

	const segs, size = 20, 1000
	var pkts [][]byte
	var want []byte
	for i := range segs {
		payload := make([]byte, size)
		for j := range payload {
			payload[j] = byte(i*7 + j)
		}
		flags := byte(tcpACK)
		if i == segs-1 {
			flags |= tcpPSH
		}
		pkts = append(pkts, tcpPacket(remote, local, iss+1+uint32(i*size), cseq, flags, nil, payload))
		want = append(want, payload...)
	}
	// Then a segment the checksum check keeps out of the run: the kernel
	// drops it.
	bad := tcpPacket(remote, local, iss+1+segs*size, cseq, tcpACK, nil, []byte("corrupted"))
	bad[len(bad)-1] ^= 1
	pkts = append(pkts, bad)
	before := d.Stats()
	if n, err := d.WritePackets(pkts); n != len(pkts) || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	st := d.Stats()
	wantWrites, wantCoalesced, wantBad := uint64(2), uint64(segs), uint64(1)
	if disable {
		wantWrites, wantCoalesced, wantBad = segs+1, 0, 0
	}
	if w, c, b := st.Writes-before.Writes, st.Coalesced-before.Coalesced, st.BadChecksum-before.BadChecksum; w != wantWrites || c != wantCoalesced || b != wantBad {
		t.Errorf("%d writes, %d coalesced, %d bad checksums; want %d, %d, %d", w, c, b, wantWrites, wantCoalesced, wantBad)
	}
	if st.Packets-before.Packets != uint64(len(pkts)) || st.WriteErrors != 0 {
		t.Errorf("stats %+v", st)
	}

	conn.SetReadDeadline(deadline)
	got := make([]byte, len(want)+100)
	if _, err := io.ReadFull(conn, got[:len(want)]); err != nil {
		t.Fatalf("socket read: %v", err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("the socket got other bytes than were written")
	}
	// The kernel acknowledges the whole run, not the corrupted segment.
	for {
		p := next()
		if p[53]&tcpACK == 0 {
			continue
		}
		if ack := binary.BigEndian.Uint32(p[48:]); ack == iss+1+segs*size {
			break
		} else if ack > iss+1+segs*size {
			t.Fatalf("the kernel acknowledged %d bytes", ack-iss-1)
		}
	}
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := conn.Read(got); err == nil {
		t.Fatalf("the socket got %d more bytes: %q", n, got[:n])
	}
	// Writing again (the kernel discards the duplicates) allocates nothing.
	if n := testing.AllocsPerRun(20, func() { d.WritePackets(pkts) }); n != 0 {
		t.Errorf("WritePackets allocates %v per batch", n)
	}
	if n := testing.AllocsPerRun(20, func() { d.WritePacket(pkts[0]) }); n != 0 {
		t.Errorf("WritePacket allocates %v per packet", n)
	}
}
