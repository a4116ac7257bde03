package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/proto"
)

// seqpacketDevice is a Device on one end of an AF_UNIX SOCK_SEQPACKET pair,
// which keeps the boundaries of what is written to the other end as a TUN
// device does: it runs the real read loop on crafted reads.
func seqpacketDevice(t *testing.T) (*Device, int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	}
	d := &Device{f: os.NewFile(uintptr(fds[0]), "seqpacket"), name: "seqpacket", vnet: true, tso: true}
	if d.rc, err = d.f.SyscallConn(); err != nil {
		t.Fatal(err)
	}
	d.batch.fn = d.batch.read
	d.batch.split = newSplitter(proto.MinMTU, &d.stats)
	t.Cleanup(func() { d.Close(); unix.Close(fds[1]) })
	return d, fds[1]
}

// TestReadPacketsPending: the segments of a super-packet that do not fit
// in one batch come first in the next, whether read by ReadPackets or
// ReadPacket, and then reading goes on with what the device queued.
func TestReadPacketsPending(t *testing.T) {
	d, w := seqpacketDevice(t)
	a := seg{seq: 100, ack: 7, flags: tcpACK | tcpPSH, n: 9*1220 + 5}.build()
	plain := seg{flow: 1, seq: 3, ack: 7, flags: tcpACK, n: 10}.build()
	c := seg{flow: 2, seq: 0xffffff00, ack: 7, flags: tcpACK | tcpFIN, n: 3 * 1220}.build()
	want := refSplit(a, 40, 1220)
	want = append(want, plain)
	want = append(want, refSplit(c, 40, 1220)...)
	for _, b := range [][]byte{asRead(tsoHdr(40, 1220), a), asRead(vnetHdr{}, plain), asRead(tsoHdr(40, 1220), c)} {
		if _, err := unix.Write(w, b); err != nil {
			t.Fatal(err)
		}
	}
	d.f.SetReadDeadline(time.Now().Add(5 * time.Second))
	bufs, sizes := make([][]byte, 4), make([]int, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 8192)
	}
	var got [][]byte
	var counts []int
	for len(got) < len(want) {
		if len(got) == 4 {
			// One packet alone in between.
			n, err := d.ReadPacket(bufs[0])
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, bytes.Clone(bufs[0][:n]))
			counts = append(counts, 1)
			continue
		}
		k, err := d.ReadPackets(bufs, sizes)
		if err != nil {
			t.Fatalf("after %d packets: %v", len(got), err)
		}
		for i := range k {
			got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
		}
		counts = append(counts, k)
	}
	if fmt.Sprint(counts) != "[4 1 4 4 1]" {
		t.Errorf("batches of %v packets, want [4 1 4 4 1]", counts)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d:\n got %x\nwant %x", i, got[i], want[i])
		}
	}
	st := d.Stats()
	if st.ReadSuper != 2 || st.ReadSegments != uint64(len(want)-1) || st.ReadDrops != 0 {
		t.Errorf("stats %+v", st)
	}
	// Nothing is left: the next read waits.
	d.f.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if k, err := d.ReadPackets(bufs, sizes); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadPackets = %d, %v; want a timeout", k, err)
	}

	// Steady state allocates nothing.
	d.f.SetReadDeadline(time.Now().Add(5 * time.Second))
	in := asRead(tsoHdr(40, 1220), a)
	if n := testing.AllocsPerRun(20, func() {
		unix.Write(w, in)
		for left := 10; left > 0; {
			k, err := d.ReadPackets(bufs, sizes)
			if err != nil {
				t.Fatal(err)
			}
			left -= k
		}
	}); n != 0 {
		t.Errorf("%v allocations per super-packet", n)
	}
}

// TestTUNReadOffload has a kernel TCP socket send a large write into the
// TUN device and plays its peer: with read offload the device reads TCP
// super-packets and hands over their segments, which must carry exactly the
// bytes sent, in order, with valid checksums, and end with the FIN; with
// offload disabled the kernel segments them itself.
func TestTUNReadOffload(t *testing.T) {
	inNetns(t, "TestTUNReadOffload", func(t *testing.T) {
		run(t, "ip", "link", "set", "lo", "up")
		run(t, "ip", "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
		for i, off := range []bool{true, false} {
			name := map[bool]string{true: "tso", false: "plain"}[off]
			t.Run(name, func(t *testing.T) {
				testKernelSend(t, fmt.Sprintf("tunrd%d", i), i, !off)
			})
		}
	})
}

func testKernelSend(t *testing.T, name string, i int, disable bool) {
	d, err := Open(Config{Name: name, Routes: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("fd00:0:0:1%d::/64", i))}, DisableOffload: disable})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if st := d.Stats(); st.Offload == disable || st.ReadOffload == disable {
		t.Fatalf("offload %v, read offload %v with DisableOffload %v", st.Offload, st.ReadOffload, disable)
	}
	remote := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("fd00:0:0:1%d::2", i)), uint16(8100+i))
	deadline := time.Now().Add(15 * time.Second)
	d.f.SetReadDeadline(deadline)

	const total = 200_000
	want := make([]byte, total)
	for j := range want {
		want[j] = byte(j*31 + j>>8)
	}
	sent := make(chan error, 1)
	conns := make(chan net.Conn, 1)
	go func() {
		dl := net.Dialer{Deadline: deadline}
		c, err := dl.Dial("tcp6", remote.String())
		if err != nil {
			sent <- err
			return
		}
		conns <- c
		c.SetWriteDeadline(deadline)
		if _, err := c.Write(want); err != nil {
			sent <- err
			return
		}
		sent <- c.(*net.TCPConn).CloseWrite()
	}()
	defer func() {
		select {
		case c := <-conns:
			c.Close()
		default:
		}
	}()

	const iss = 5_000_000
	var (
		local  netip.AddrPort
		sseq   uint32 // the kernel's first data byte
		synced bool
		got    = make([]byte, 0, total)
		fin    bool
		ooo    int
	)
	bufs, sizes := make([][]byte, 8), make([]int, 8)
	for j := range bufs {
		bufs[j] = make([]byte, 8192)
	}
	opts := []byte{2, 4, (proto.MinMTU - 60) >> 8, (proto.MinMTU - 60) & 0xff, 1, 3, 3, 7} // MSS, window scale 7
	for !fin {
		k, err := d.ReadPackets(bufs, sizes)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v (stats %+v)", len(got), total, err, d.Stats())
		}
		for j := range k {
			p := bufs[j][:sizes[j]]
			if len(p) < 60 || p[0]>>4 != 6 || p[6] != 6 || proto.Dst(p) != remote.Addr() ||
				binary.BigEndian.Uint16(p[42:]) != remote.Port() {
				continue
			}
			if len(p) > proto.MinMTU || !tcpValid(p, 40) || int(binary.BigEndian.Uint16(p[4:])) != len(p)-40 {
				t.Fatalf("packet of %d bytes, payload length %d, checksum valid %v", len(p), binary.BigEndian.Uint16(p[4:]), tcpValid(p, 40))
			}
			flags := p[53]
			if !synced {
				if flags != tcpSYN {
					t.Fatalf("first packet has flags %#x, not SYN", flags)
				}
				local = netip.AddrPortFrom(proto.Src(p), binary.BigEndian.Uint16(p[40:]))
				sseq = binary.BigEndian.Uint32(p[44:]) + 1
				synced = true
				if err := d.WritePacket(tcpPacket(remote, local, iss, sseq, tcpSYN|tcpACK, opts, nil)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			payload := p[40+int(p[52]>>4)*4:]
			off := int(binary.BigEndian.Uint32(p[44:]) - sseq)
			switch {
			case off == len(got):
				got = append(got, payload...)
			case off+len(payload) > len(got):
				ooo++ // the kernel sends it again
				continue
			}
			if len(got) > total || !bytes.Equal(got, want[:len(got)]) {
				t.Fatalf("the first %d bytes differ from those sent", len(got))
			}
			if flags&tcpFIN != 0 {
				if off+len(payload) != total {
					t.Fatalf("FIN at %d of %d bytes", off+len(payload), total)
				}
				fin = true
			}
		}
		if synced {
			ack := sseq + uint32(len(got))
			if fin {
				ack++
			}
			ap := tcpPacket(remote, local, iss+1, ack, tcpACK, nil, nil)
			binary.BigEndian.PutUint16(ap[54:], 0xffff) // 8 MB with the scale
			setTCPChecksum(ap)
			if err := d.WritePacket(ap); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("the socket's write: %v", err)
		}
	case <-time.After(time.Until(deadline)):
		t.Fatal("the socket's write did not finish")
	}
	st := d.Stats()
	t.Logf("%d bytes; %d out of order; stats %+v", len(got), ooo, st)
	if st.ReadDrops != 0 {
		t.Errorf("%d packets dropped", st.ReadDrops)
	}
	if disable {
		if st.ReadSuper != 0 || st.ReadSegments != 0 {
			t.Errorf("super-packets without read offload: %+v", st)
		}
		return
	}
	if st.ReadSuper == 0 || st.ReadSegments < 2*st.ReadSuper {
		t.Errorf("the kernel sent %d super-packets of %d segments: no TSO", st.ReadSuper, st.ReadSegments)
	}
}
